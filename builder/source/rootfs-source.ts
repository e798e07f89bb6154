/** Where an image's root filesystem comes from (`rootfs` in image.json); validated in load-image.ts. */
export const rootfsSourceTypes = ['dir', 'tar', 'oci', 'docker-archive', 'mmdebstrap'] as const;
export type RootfsSourceType = (typeof rootfsSourceTypes)[number];

export type RootfsSource =
  | { type: 'dir'; path: string }
  | { type: 'tar'; path: string }
  | { type: 'oci' | 'docker-archive'; path: string; ref: string | undefined }
  | { type: 'mmdebstrap'; suite: string; packages: string[]; mirror: string | undefined; variant: string };
