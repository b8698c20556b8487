//! Who is asking: a runtime on Nomad proves which allocation it is with that allocation's
//! workload-identity JWT, and the controller maps the allocation to the instance it dispatched.
//!
//! Why this shape (docs/nomad.md, "What the backend must add"): the JWT's `nomad_job_id` is the
//! *parent* job for every dispatched child, so it cannot tell instances apart; the allocation
//! ID can. The controller never saw that ID before the runtime calls (Nomad picks it after the
//! dispatch), so the first request of an allocation costs one `GET /v1/allocation/:id`, whose
//! answer names the dispatched child job (and carries its `Meta.instance_id`); both must lead
//! to an instance this controller dispatched and has not finished. The binding is then cached:
//! one allocation per instance, and an instance whose report has begun is refused from then on
//! (single redemption, as with the process backend's tokens). A replacement allocation (Nomad
//! replaces lost ones whatever the reschedule policy) is refused outright.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;
use polydev_nomad::spec::{META_INSTANCE_ID, TASK_NAME};
use polydev_nomad::{JwtError, NomadClient, QueryOptions, WorkloadIdentityVerifier};

use crate::backend::pull::{AuthError, InstanceAuthenticator, InstanceId};

/// What the controller knows of one instance it dispatched.
#[derive(Debug, Default, Clone)]
pub(super) struct Entry {
    /// The dispatched child job's ID, once Nomad answered the dispatch.
    pub child: Option<String>,
    /// The allocation bound to it (first authenticated request, or the supervisor's watch).
    pub alloc: Option<String>,
    /// Its report began: its credential is spent.
    pub redeemed: bool,
}

#[derive(Default)]
pub(super) struct Book {
    pub instances: HashMap<InstanceId, Entry>,
    /// Child job ID → instance.
    pub children: HashMap<String, InstanceId>,
    /// Allocation ID → instance.
    pub allocs: HashMap<String, InstanceId>,
}

/// The instances this backend dispatched, shared by the supervisors and the authenticator.
#[derive(Default)]
pub(super) struct Ledger(Mutex<Book>);

impl Ledger {
    pub(super) fn lock(&self) -> MutexGuard<'_, Book> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn add(&self, id: &InstanceId) {
        self.lock().instances.insert(id.clone(), Entry::default());
    }

    pub(super) fn set_child(&self, id: &InstanceId, child: &str) {
        let mut b = self.lock();
        if let Some(e) = b.instances.get_mut(id) {
            e.child = Some(child.to_owned());
            b.children.insert(child.to_owned(), id.clone());
        }
    }

    /// Binds `alloc` to `id` unless another allocation already is. `false` if refused.
    pub(super) fn bind(&self, id: &InstanceId, alloc: &str) -> bool {
        let mut b = self.lock();
        let Some(e) = b.instances.get_mut(id) else {
            return false;
        };
        match &e.alloc {
            Some(a) if a != alloc => false,
            Some(_) => true,
            None => {
                e.alloc = Some(alloc.to_owned());
                b.allocs.insert(alloc.to_owned(), id.clone());
                true
            }
        }
    }

    /// The allocation bound to `id`, if any.
    pub(super) fn alloc_of(&self, id: &InstanceId) -> Option<String> {
        self.lock().instances.get(id).and_then(|e| e.alloc.clone())
    }

    /// The instance is finished: nothing authenticates as it any more.
    pub(super) fn forget(&self, id: &InstanceId) {
        let mut b = self.lock();
        if let Some(e) = b.instances.remove(id) {
            if let Some(c) = e.child {
                b.children.remove(&c);
            }
            if let Some(a) = e.alloc {
                b.allocs.remove(&a);
            }
        }
    }

    /// Child jobs of instances still known (for the shutdown sweep).
    pub(super) fn children(&self) -> Vec<String> {
        self.lock().children.keys().cloned().collect()
    }
}

/// [`InstanceAuthenticator`] for Nomad: JWT → claims → allocation → dispatched child → instance.
pub(super) struct NomadAuthenticator {
    pub verifier: WorkloadIdentityVerifier,
    pub client: NomadClient,
    pub ledger: Arc<Ledger>,
    /// The parameterized parent job (the claims' `nomad_job_id`).
    pub parent: String,
    /// The namespace it lives in.
    pub namespace: String,
}

impl NomadAuthenticator {
    async fn verify(&self, credential: &str) -> Result<InstanceId, AuthError> {
        let credential = credential.trim();
        if credential.is_empty() {
            return Err(AuthError::Missing);
        }
        let claims = self.verifier.verify(credential).await.map_err(|e| {
            if let JwtError::Jwks(_) = &e {
                tracing::warn!(error = %e, "nomad backend: cannot check a runtime's identity");
            }
            match e {
                JwtError::Expired => AuthError::Expired,
                _ => AuthError::Invalid,
            }
        })?;
        if claims.job_id != self.parent
            || claims.namespace != self.namespace
            || claims.task.as_deref().is_some_and(|t| t != TASK_NAME)
        {
            return Err(AuthError::Invalid);
        }
        let alloc_id = claims.allocation_id;
        // Known allocation: no Nomad call.
        {
            let b = self.ledger.lock();
            if let Some(id) = b.allocs.get(&alloc_id) {
                return match b.instances.get(id) {
                    Some(e) if !e.redeemed => Ok(id.clone()),
                    _ => Err(AuthError::Invalid),
                };
            }
        }
        let alloc = self
            .client
            .read_allocation(&alloc_id, &QueryOptions::default())
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "nomad backend: cannot read a runtime's allocation");
                AuthError::Invalid
            })?
            .value;
        if alloc.status().is_terminal() || alloc.id != alloc_id {
            return Err(AuthError::Invalid);
        }
        // A replacement Nomad placed for a lost allocation (it names the one it replaces:
        // scheduler/generic_sched.go:664-666) never gets a job: the instance's job belongs to
        // the first allocation, and running it twice is what the job's policies forbid.
        if !alloc.previous_allocation.is_empty() {
            tracing::warn!(allocation = %alloc_id, replaces = %alloc.previous_allocation, "nomad backend: refused a replacement allocation");
            return Err(AuthError::Invalid);
        }
        let meta_instance = alloc
            .job
            .as_ref()
            .and_then(|j| j.get("Meta"))
            .and_then(|m| m.get(META_INSTANCE_ID))
            .and_then(|v| v.as_str())
            .and_then(|s| InstanceId::new(s).ok());
        let id = {
            let b = self.ledger.lock();
            match b.children.get(&alloc.job_id) {
                Some(id) => id.clone(),
                // The dispatch answer may not have reached us yet: the child's Meta names the
                // instance, which must be one we dispatched and whose child is this one's.
                None => match meta_instance {
                    Some(id)
                        if alloc
                            .job_id
                            .starts_with(&format!("{}/dispatch-", self.parent))
                            && b.instances.get(&id).is_some_and(|e| e.child.is_none()) =>
                    {
                        id
                    }
                    _ => return Err(AuthError::Invalid),
                },
            }
        };
        if self.ledger.bind(&id, &alloc_id) {
            Ok(id)
        } else {
            Err(AuthError::Invalid)
        }
    }
}

impl InstanceAuthenticator for NomadAuthenticator {
    fn authenticate<'a>(
        &'a self,
        credential: &'a str,
    ) -> BoxFuture<'a, Result<InstanceId, AuthError>> {
        Box::pin(self.verify(credential))
    }

    fn redeemed(&self, id: &InstanceId) {
        if let Some(e) = self.ledger.lock().instances.get_mut(id) {
            e.redeemed = true;
        }
    }
}
