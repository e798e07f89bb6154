/** The validated form of an image definition (images/NAME/image.json). */
import type { OSConfig } from '../../runtime/core/os-config.js';
import type { RootfsSource } from '../source/rootfs-source.js';

export interface ImageDefinition {
  name: string;
  version: string;
  /** A host only installs bundles whose `compatible` equals its own. */
  compatible: string;
  arch: 'x86_64';
  /** Layout used when the build names none. */
  layout: string;
  kernel: {
    /** Debian package with the kernel: a versioned one, or a meta package resolved through apt. */
    package: string;
    /** Modules the initramfs loads (their dependencies are added in order). */
    modules: string[];
    cmdline: string;
  };
  /** Include Node.js, the bundled agent and its configuration (undefined: no agent). */
  agent: { channel: string | undefined; updateServer: string | undefined; updates: 'channel' | 'cluster'; trustedKeys: string[]; pollSeconds: number } | undefined;
  /** Where the root filesystem comes from (paths absolute); undefined: busybox as userland. */
  rootfs: RootfsSource | undefined;
  /** Directories of files copied over the root in order (absolute after loading). */
  files: string[];
  /** OS configuration baked into the read-only root (the model `kubeos agent config` applies on hosts). */
  config: OSConfig | undefined;
  /** Directory the definition came from (absolute). */
  dir: string;
  /** The definition's file, for messages. */
  file: string;
}
