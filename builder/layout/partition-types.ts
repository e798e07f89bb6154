/**
 * GPT partition type GUIDs by friendly name, from the UAPI Discoverable Partitions Specification
 * (and the UEFI spec for the ESP). A layout may also give a raw GUID.
 */
export const partitionTypes = {
  'esp': 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
  'root-x86-64': '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709',
  'root-arm64': 'B921B045-1DF0-41C3-AF44-4C6F280D3FAE',
  'var': '4D21B016-B534-45C2-A9FB-5C16E091FD2D',
  'srv': '3B8F8425-20E0-4F3B-907F-1A25A76F98E8',
  'linux-generic': '0FC63DAF-8483-4772-8E79-3D69D8477DE4',
} as const;

export type PartitionTypeName = keyof typeof partitionTypes;

export const guidPattern = /^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$/i;

/** GPT attribute bit 60: read-only, as the Discoverable Partitions Specification uses it. */
export const readOnlyAttributeBit = 60;
