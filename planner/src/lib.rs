//! Plan templates of opscase: turn a cmd.plan.generate into a ChangePlan that passes the schema.
