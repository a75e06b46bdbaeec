//! posbridge's security module: the only place that touches PIN blocks, MAC keys and working keys.
