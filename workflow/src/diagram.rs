use crate::table::{Source, Status, TRANSITIONS};

/// The Mermaid state diagram of [`TRANSITIONS`], as the README shows it.
pub fn mermaid_state_diagram() -> String {
    let mut lines = vec!["stateDiagram-v2".to_string(), "    [*] --> NEW".to_string()];
    for transition in TRANSITIONS {
        let sources: Vec<Status> = match transition.from {
            Source::Exactly(status) => vec![status],
            Source::AnyNonTerminal => Status::ALL
                .into_iter()
                .filter(|s| !s.is_terminal())
                .collect(),
        };
        let guard = transition
            .guard
            .map(|g| format!(" [{}]", g.describe()))
            .unwrap_or_default();
        for from in sources {
            lines.push(format!(
                "    {from} --> {}: {}{guard}",
                transition.to, transition.event
            ));
        }
    }
    lines.push("    CLOSED --> [*]".to_string());
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_and_every_cancel_source_is_drawn() {
        let diagram = mermaid_state_diagram();
        assert!(diagram.contains("    PLANNING --> WAIT_GATE: plan_ready [complete plan]\n"));
        for status in Status::ALL.into_iter().filter(|s| !s.is_terminal()) {
            assert!(diagram.contains(&format!("    {status} --> CLOSED: cancel [reason]\n")));
        }
        assert!(!diagram.contains("CLOSED --> CLOSED"));
    }
}
