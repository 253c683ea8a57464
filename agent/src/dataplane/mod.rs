//! The kernel side, seen from userspace: load the TC programs, attach them, sync maps, read events.
