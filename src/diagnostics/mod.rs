//! What the platform needs to diagnose a terminal without a visit (PROTOCOL §9): the inventory
//! carried in the birth, the kernel's clock discipline carried in health, and the upload of
//! journal entries on request.
//!
//! Everything here reads; nothing changes the host. Files are read under `paths.root`; the
//! kernel calls (uname, adjtimex) always ask the real kernel, behind small seams for tests.

pub mod inventory;
pub mod logs;
pub mod timesync;
