# polydev-runtime: the one parameterized batch job the controller's Nomad backend dispatches.
#
# This is the HCL twin of `polydev-controller nomad-spec` (built by
# crates/nomad/src/spec.rs); crates/nomad/tests/spec_hcl.rs parses this file and fails if the
# two disagree on hardening, resources, restart/reschedule or identity settings.
#
#   nomad job run \
#     -var 'controller_url=https://polydev-controller.example:8443' \
#     -var 'image=polydev-runtime:0.1.0' \
#     deploy/nomad/polydev-runtime.nomad.hcl
#
# Nothing secret is in here, and nothing secret may be added: no env with keys, no template
# rendering credentials, no dispatch payload (it is forbidden below). Each instance proves
# who it is to the controller with its workload-identity JWT and pulls its one job over TLS.
#
# Cluster settings this job relies on (see docs/nomad.md):
# - memory oversubscription enabled, so `memory_max` above the small reservation applies
#   (without it Nomad registers the job with the warning "Memory oversubscription is not
#   enabled; Task "runtime.runtime" memory_max value will be ignored", and each runtime is
#   held to its 32 MB reservation);
# - the docker plugin's defaults allow the hardening below; `runtime = "runsc"` additionally
#   needs `plugin "docker" { config { allow_runtimes = ["runc", "runsc"] } }` on every client
#   (the default is ["runc", "nvidia"]; otherwise every allocation fails with
#   `requested runtime "runsc" is not allowed`: drivers/docker/config.go:272-275,
#   driver.go:1074-1076).

variable "image" {
  type        = string
  description = "Pinned runtime image. Never `latest`: Nomad would pull on every start."
  default     = "polydev-runtime:0.1.0"
}

variable "controller_url" {
  type        = string
  description = "URL runtimes use to reach the controller (POLYDEV_PUBLIC_URL); https://."
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

job "polydev-runtime" {
  type        = "batch"
  datacenters = var.datacenters

  # Every instance is a dispatched child. Only opaque IDs travel in meta (meta is stored in
  # Raft and visible to anyone with read-job); payloads are refused outright.
  parameterized {
    payload       = "forbidden"
    meta_required = ["instance_id"]
    meta_optional = ["execution_id"]
  }

  group "runtime" {
    count = 1

    # One job per runtime: a failed allocation is neither restarted nor rescheduled. (Nomad
    # still replaces a lost one, node down, whatever this says; the controller refuses the
    # replacement a job and stops it.)
    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    # Nomad's minimum; nothing is written to it (logs are disabled, the root is read-only).
    ephemeral_disk {
      size = 10
    }

    task "runtime" {
      driver = "docker"
      user   = "65534:65534" # the image is FROM scratch: numeric, non-root

      config {
        image           = var.image
        readonly_rootfs = true
        cap_drop        = ["ALL"]
        security_opt    = ["no-new-privileges"]
        pids_limit      = 64
        privileged      = false
        # network_mode = "bridge" # or a dedicated egress network
        # runtime      = "runsc"  # gVisor, where installed
      }

      env {
        WARM_POOL          = "true"
        CONTROLLER_URL     = var.controller_url
        RUNTIME_TOKEN_FILE = "${NOMAD_SECRETS_DIR}/nomad_polydev.jwt"
      }

      # A named identity, written to secrets/nomad_polydev.jwt and renewed by Nomad before
      # it expires; the runtime re-reads the file on every request. Named (not the default
      # identity) because only named identities take an audience and a TTL.
      identity {
        name        = "polydev"
        aud         = ["polydev-controller"]
        file        = true
        env         = false
        change_mode = "noop"
        ttl         = "1h"
      }

      # The runtime streams to the controller; model output must not land on node disk.
      # max_files/max_file_size are required even with logs disabled: Nomad fills absent ones
      # with 10 x 10 MB and refuses the job unless the ephemeral disk (10 MB) exceeds
      # max_files x max_file_size ("log storage (100 MB) must be less than requested disk
      # capacity (10 MB)": nomad/structs/structs.go:7863-7883, api/tasks.go:729-739).
      logs {
        disabled      = true
        max_files     = 1
        max_file_size = 1
      }

      resources {
        cpu        = 100
        memory     = 32
        memory_max = 128
      }

      kill_timeout = "5s"
    }
  }
}
