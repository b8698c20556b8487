//! `polydev-controller`: the master controller. An HTTP API for the frontend, a scheduler with
//! admission control, a warm pool, and backends that run `polydev-runtime` executions
//! (DESIGN.md 5).

pub mod backend;
