/**
 * Version order for bundles and channels: semantic versions compared numerically, a pre-release
 * ("2.0.0-rc.1") before its release; parts that are not numbers compare as text.
 */
/**
 * What kubeos accepts as a version, everywhere (image definitions, `--image-version`, bundles,
 * OSUpgrade.spec.version; deploy/crd-osupgrade.yaml carries the same pattern, checked by a test).
 */
export const versionPattern = /^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$/;

export function compareVersions(a: string, b: string): number {
  const split = (v: string) => {
    const [core = '', pre] = (v.split('+')[0] ?? '').split(/-(.*)/s);
    return { core: core.split('.'), pre };
  };
  const x = split(a);
  const y = split(b);
  for (let i = 0; i < Math.max(x.core.length, y.core.length, 3); i++) {
    const order = comparePart(x.core[i] ?? '0', y.core[i] ?? '0');
    if (order !== 0) return order;
  }
  if (x.pre === y.pre) return 0;
  if (x.pre === undefined) return 1;
  if (y.pre === undefined) return -1;
  const xp = x.pre.split('.');
  const yp = y.pre.split('.');
  for (let i = 0; i < Math.max(xp.length, yp.length); i++) {
    if (xp[i] === undefined) return -1;
    if (yp[i] === undefined) return 1;
    const order = comparePart(xp[i] as string, yp[i] as string);
    if (order !== 0) return order;
  }
  return 0;
}

function comparePart(x: string, y: string): number {
  if (x === y) return 0;
  if (/^\d+$/.test(x) && /^\d+$/.test(y)) return Math.sign(Number(x) - Number(y));
  return x < y ? -1 : 1;
}
