//! Executing plans on nodes: `up`, `down`, `status`, `logs`.
