//! Unit tests of the notifier.
