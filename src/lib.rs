//! resilient-operator: one `ResilientApp` becomes a namespace with guardrails and zone-spread,
//! zone-failure-tolerant workloads that the operator keeps that way.
//!
//! - [`api`]: the custom resource and its conditions.
//! - [`resilience`]: replica math, usable zones and survivability (pure).
//! - [`render`]: one pure builder per child kind.
//! - [`controller`]: watches, caches and the reconcile pipeline.

pub mod api;
pub mod cli;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod plugin;
pub mod render;
pub mod resilience;
pub mod shutdown;
pub mod simulate;
pub mod status;
pub mod telemetry;
