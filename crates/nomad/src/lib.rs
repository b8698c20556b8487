//! Everything the Nomad backend needs from Nomad that does not depend on the controller
//! (issue 7): a thin typed HTTP client, workload-identity JWT verification, the runtime's
//! parameterized job spec, and (feature `fake`) an in-process fake Nomad that really runs
//! allocations.
//!
//! - [`client::NomadClient`]: register, dispatch (always with an idempotency token), job
//!   allocations, allocation, evaluation, stop/purge, blocking queries, the event stream and
//!   the JWKS; configured by Nomad's own `NOMAD_*` variables ([`config::NomadConfig`]); bounded
//!   retries on transient failures for calls that are safe to repeat; typed
//!   [`error::NomadError`].
//! - [`jwt::WorkloadIdentityVerifier`]: RS256/EdDSA verification against a cached JWKS that
//!   refreshes on unknown key IDs; returns the `nomad_*` claims.
//! - [`spec::runtime_job`]: `{"Job": {...}}` for the hardened parameterized batch job;
//!   `deploy/nomad/polydev-runtime.nomad.hcl` is its HCL twin (a test keeps them equal).
//! - `fake::FakeNomad` (feature `fake`): for this crate's tests and other crates'
//!   dev-dependencies.
//!
//! Nothing here has run against a live Nomad cluster; everything is checked against Nomad's
//! source and documented API shapes, and the fake, which refuses what Nomad refuses
//! (docs/nomad.md, including the checklist for a first live cluster).

pub mod client;
pub mod config;
pub mod error;
pub mod jwt;
pub mod spec;
mod transport;
pub mod types;

#[cfg(feature = "fake")]
pub mod fake;

pub use client::{
    DispatchRequest, EventStream, EventStreamRequest, NomadClient, QueryOptions, QueryResponse,
};
pub use config::{NomadConfig, RetryPolicy, TlsSettings};
pub use error::NomadError;
pub use jwt::{JwtError, VerifyOptions, WorkloadClaims, WorkloadIdentityVerifier};
pub use spec::{RuntimeJobConfig, SpecError, runtime_job};
