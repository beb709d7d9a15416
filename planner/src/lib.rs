//! Plan templates of opscase: turn a cmd.plan.generate into a ChangePlan that passes the schema.
//!
//! The core is pure: [`generate`] maps a [`PlanCommand`](workflow::messages::PlanCommand) (the
//! case brief, a template name, template params) to a ChangePlan, and checks it with the very
//! guard the orchestrator applies ([`workflow::plan::check_change_plan`]) before handing it
//! back. [`Planner`] is the thin worker around it: it answers every `cmd.plan.generate` with
//! exactly one `evt.plan.proposed.v1` (a plan that passed the guard) or `evt.plan.failed.v1`
//! (why no plan could be made), never an invalid plan as proposed.

pub mod llm;
mod templates;
mod worker;

pub use llm::{LlmPlanner, PlanLimits, LLM_TEMPLATE};
pub use templates::{
    chosen_template, generate, templates, PlanError, TemplateInfo, DEFAULT_TEMPLATE,
};
pub use worker::{Planner, DEFAULT_SOURCE};
