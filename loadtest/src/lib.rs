//! `rossby-loadtest`: the multi-region, open-loop load generator with exact
//! delivery accounting. Filled by the load-test work; a placeholder until then.
