import { access } from 'node:fs/promises';

/** Whether a path exists on this host (drivers and labs probe state files and caches with it). */
export async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}
