//! Deterministic change gate of opscase: a policy file decides auto-approval, human review or rejection.
