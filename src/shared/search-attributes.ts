// Typed search attributes: the Temporal UI filters migrations by these. The dev server registers
// them at start (src/labs/temporal-dev.ts); a production cluster needs
// `temporal operator search-attribute create` once (docs/operations.md).
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

export const SA_INSTANCE = defineSearchAttributeKey('FerryInstance', SearchAttributeType.KEYWORD);
export const SA_SOURCE = defineSearchAttributeKey('FerrySource', SearchAttributeType.KEYWORD);
export const SA_DESTINATION = defineSearchAttributeKey('FerryDestination', SearchAttributeType.KEYWORD);
export const SA_PHASE = defineSearchAttributeKey('FerryPhase', SearchAttributeType.KEYWORD);
export const SA_OUTCOME = defineSearchAttributeKey('FerryOutcome', SearchAttributeType.KEYWORD);

export const SEARCH_ATTRIBUTE_NAMES = ['FerryInstance', 'FerrySource', 'FerryDestination', 'FerryPhase', 'FerryOutcome'];
