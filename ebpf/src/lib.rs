//! Empty on purpose: lets the agent take this crate as a build-dependency so that its
//! build script reruns when the TC programs change. The programs are in `main.rs`.
#![no_std]
