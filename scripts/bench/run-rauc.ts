/**
 * RAUC as a peer of kubeos in the bench, on the same image in the same run: `rauc bundle` next to
 * `kubeos bundle create`, and `rauc install` from the same 127.0.0.1 server into a file-backed
 * slot next to `kubeos agent upgrade`.
 *
 * What this RAUC is, and why (Debian 12's rauc 1.8):
 *   - bundles are `format=plain`, squashfs compressed with zstd at kubeos's level (3). A `verity`
 *     bundle builds, but installing one needs device-mapper (/dev/mapper/control), which the bench
 *     machine's kernel does not have; plain is the format rauc 1.8 can install here. A plain bundle
 *     given as a URL is downloaded whole to a temp file, then checked, loop-mounted and copied.
 *   - `rauc install` is a D-Bus client of `rauc service`. The service runs in the foreground on a
 *     private session bus of its own (`dbus-daemon --session`, DBUS_STARTER_BUS_TYPE=session makes
 *     rauc use it), with a system.conf naming two file-backed raw slots, the `noop` bootloader
 *     (there is no boot loader to switch: kubeos writes a grubenv file, RAUC writes nothing) and
 *     --override-boot-slot=A.
 *   - the signing certificate is a self-signed one made with openssl; it is also the keyring.
 */
import { writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type ResultPromise } from 'execa';
import { findTool } from '../../runtime/core/exec.js';
import { zstdLevel } from '../../builder/bundle/create-bundle.js';
import { runFloor } from './run-floor.js';

const raucPackages = { rauc: 'rauc', mksquashfs: 'squashfs-tools', 'dbus-daemon': 'dbus-daemon', openssl: 'openssl' } as const;

/** The RAUC tools that are missing, each with its Debian package; empty when RAUC can run. */
export async function missingRaucTools(): Promise<string[]> {
  const missing: string[] = [];
  for (const [tool, pkg] of Object.entries(raucPackages)) if ((await findTool(tool)) === undefined) missing.push(`${tool} (Debian package ${pkg})`);
  return missing;
}

export const raucBundleLabel = `rauc bundle (rauc 1.8, format=plain, squashfs -comp zstd -Xcompression-level ${zstdLevel})`;

export interface RaucSigner {
  cert: string;
  key: string;
}

export async function makeRaucSigner(dir: string): Promise<RaucSigner> {
  const cert = join(dir, 'rauc-cert.pem');
  const key = join(dir, 'rauc-key.pem');
  await execa('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '30', '-subj', '/O=kubeos-bench/CN=rauc bench signer'], { timeout: 60_000, stdin: 'ignore' });
  return { cert, key };
}

/**
 * `rauc bundle` of IMAGE into OUT through a content directory holding a hard link to the image
 * and a fresh manifest (rauc rewrites the manifest in place with the image's size and sha256).
 * Returns the seconds rauc took, measured in its shell.
 */
export async function createRaucBundle(image: string, out: string, content: string, signer: RaucSigner): Promise<number> {
  return runFloor(String.raw`rm -rf "$3" "$2"
mkdir "$3"
ln "$1" "$3/rootfs.img"
printf '%s\n' '[update]' 'compatible=bench' 'version=2.0.0' '[bundle]' 'format=plain' '[image.rootfs]' 'filename=rootfs.img' >"$3/manifest.raucm"
rauc bundle --cert="$4" --key="$5" --keyring="$4" --mksquashfs-args="$6" "$3" "$2"
rm -rf "$3"`, [image, out, content, signer.cert, signer.key, `-comp zstd -Xcompression-level ${zstdLevel}`]);
}

export interface RaucHost {
  /** `rauc install URL` then `sync SLOT`, measured in its shell. */
  install: (url: string) => Promise<number>;
  close: () => Promise<void>;
}

function systemConf(dir: string, cert: string, slotA: string, slotB: string): string {
  return [
    '[system]', 'compatible=bench', 'bootloader=noop', `data-directory=${join(dir, 'data')}`,
    // the default refuses downloads over 8 MiB
    'max-bundle-download-size=17179869184',
    '[keyring]', `path=${cert}`,
    '[slot.rootfs.0]', `device=${slotA}`, 'type=raw', 'bootname=A',
    '[slot.rootfs.1]', `device=${slotB}`, 'type=raw', 'bootname=B', '',
  ].join('\n');
}

async function firstLine(child: ResultPromise): Promise<string> {
  if (child.stdout === null) throw new Error('no stdout');
  const lines = createInterface({ input: child.stdout });
  for await (const line of lines) {
    if (line.trim() !== '') return line.trim();
  }
  throw new Error('dbus-daemon printed no address');
}

/** A private bus and a foreground `rauc service` on it; slots A and B are files already there. */
export async function startRaucHost(dir: string, cert: string, slotA: string, slotB: string): Promise<RaucHost> {
  await mkdir(join(dir, 'data'), { recursive: true });
  await mkdir(join(dir, 'mnt'), { recursive: true });
  const conf = join(dir, 'system.conf');
  await writeFile(conf, systemConf(dir, cert, slotA, slotB));
  const bus: ResultPromise = execa('dbus-daemon', ['--session', '--nofork', `--address=unix:path=${join(dir, 'bus')}`, '--print-address=1'], { reject: false, stdin: 'ignore', buffer: false, stderr: 'ignore' });
  let service: ResultPromise | undefined;
  const stop = async () => {
    service?.kill('SIGTERM');
    await service;
    bus.kill('SIGTERM');
    await bus;
  };
  try {
    const address = await Promise.race([firstLine(bus), sleep(10_000).then(() => { throw new Error('dbus-daemon did not start in 10 s'); })]);
    const env = { DBUS_SESSION_BUS_ADDRESS: address, DBUS_STARTER_BUS_TYPE: 'session' };
    service = execa('rauc', ['service', `--conf=${conf}`, `--mount=${join(dir, 'mnt')}`, '--override-boot-slot=A'], { env, reject: false, stdin: 'ignore', buffer: false, stdout: 'ignore', stderr: 'ignore' });
    let ready = false;
    for (let i = 0; i < 200 && !ready; i++) {
      ready = (await execa('rauc', ['status', `--conf=${conf}`], { env, reject: false, timeout: 10_000, stdin: 'ignore' })).exitCode === 0;
      if (!ready) await sleep(50);
    }
    if (!ready) throw new Error('rauc service did not answer on its private bus in 10 s');
    return {
      install: (url) => runFloor('rauc install "$1"\nsync "$2"', [url, slotB], { env }),
      close: stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}
