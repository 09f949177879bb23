//! The mTLS edge (being written).
