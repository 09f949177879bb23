//! The real-browser harness of the console's tests: headless Chromium over WebDriver. It lives
//! in the simulators crate ([`locker_sim::browser`]) so `locker-sim bench console` drives the
//! same harness; this module re-exports it so tests keep writing `locker_tests::browser::Browser`.

pub use locker_sim::browser::*;
