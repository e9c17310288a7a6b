// Where an incoming file disk goes on a destination whose storage is laid out differently:
// prefix rewrites (node.xen.pathMap, node.libvirt.pathMap), first match wins, default the same path.

export interface PathRule {
  from: string;
  to: string;
}

/** `path` under the first rule whose `from` holds it; a prefix is a whole folder (`/img` maps `/img/a`, not `/img2/a`). */
export function mapPath(path: string, rules: readonly PathRule[] | undefined): string {
  const under = (from: string) => (from.endsWith('/') ? path.startsWith(from) : path === from || path.startsWith(`${from}/`));
  const rule = rules?.find((r) => under(r.from));
  return rule ? rule.to + path.slice(rule.from.length) : path;
}
