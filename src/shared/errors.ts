// One error type per thing an operator must act on. The `type` is a stable name that callers,
// retry policies and tests branch on; the message says what to do next.
import { ApplicationFailure } from '@temporalio/common';

export const ErrorTypes = {
  UnknownInstance: 'UnknownInstance',
  UnknownNode: 'UnknownNode',
  InvalidDestination: 'InvalidDestination',
  InstanceNotRunning: 'InstanceNotRunning',
  HypervisorMismatch: 'HypervisorMismatch',
  DestinationFull: 'DestinationFull',
  DestinationDiskFull: 'DestinationDiskFull',
  WontConverge: 'WontConverge',
  PvNeedsShadowPaging: 'PvNeedsShadowPaging',
  /** A disk Ferry cannot track writes under (a snapshot origin, a qdisk backend, no blktrace): refused before any side effect. */
  CannotTrack: 'CannotTrack',
  BadInput: 'BadInput',
  BadFrame: 'BadFrame',
  AuthFailed: 'AuthFailed',
  MigrationCancelled: 'MigrationCancelled',
  MemoryMigrationFailed: 'MemoryMigrationFailed',
  /** The destination hypervisor refused the memory stream; the guest runs on the source again. */
  MigrationRefused: 'MigrationRefused',
  /** The hypervisor lost track of the guest and Ferry found no single running copy: an operator must look. */
  GuestStateUndefined: 'GuestStateUndefined',
  DriverError: 'DriverError',
} as const;
export type ErrorType = (typeof ErrorTypes)[keyof typeof ErrorTypes];

/** Errors that no retry can fix: the retry policies list them as non-retryable. */
export const NON_RETRYABLE: ErrorType[] = [
  ErrorTypes.UnknownInstance,
  ErrorTypes.UnknownNode,
  ErrorTypes.InvalidDestination,
  ErrorTypes.InstanceNotRunning,
  ErrorTypes.HypervisorMismatch,
  ErrorTypes.DestinationFull,
  ErrorTypes.DestinationDiskFull,
  ErrorTypes.WontConverge,
  ErrorTypes.PvNeedsShadowPaging,
  ErrorTypes.CannotTrack,
  ErrorTypes.BadInput,
  ErrorTypes.AuthFailed,
  ErrorTypes.MigrationRefused,
  ErrorTypes.GuestStateUndefined,
];

/** A plain Error carrying a Ferry error type; activities convert it with `toFailure`. */
export class FerryError extends Error {
  constructor(
    public readonly type: ErrorType,
    message: string,
    public readonly details?: unknown,
  ) {
    super(message);
    this.name = type;
  }
}

export function failure(type: ErrorType, message: string, details?: unknown): ApplicationFailure {
  return ApplicationFailure.create({
    type,
    message,
    nonRetryable: NON_RETRYABLE.includes(type),
    details: details === undefined ? undefined : [details],
  });
}

/** Maps a FerryError to a Temporal failure; anything else is left to the default retry. */
export function toFailure(err: unknown): unknown {
  if (err instanceof FerryError) return failure(err.type, err.message, err.details);
  return err;
}
