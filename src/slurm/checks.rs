//! What the launcher relies on in a plan.

use std::collections::HashMap;

use super::Step;
use crate::error::{Error, Result};

/// Checks what the launcher relies on: unique ids, predecessors earlier in the plan, array
/// groups of one kind whose members do not wait for each other.
pub(super) fn check_plan(steps: &[Step]) -> Result<()> {
    let mut seen: HashMap<&str, &Step> = HashMap::new();
    let bad = |m: String| Err(Error::Internal(format!("plan for Slurm: {m}")));
    for st in steps {
        if st.argv.is_empty() {
            return bad(format!("step {} has no command", st.id));
        }
        for a in &st.after {
            let Some(pred) = seen.get(a.as_str()) else {
                return bad(format!(
                    "step {} waits for {a}, which does not come before it",
                    st.id
                ));
            };
            if st.array.is_some() && pred.array == st.array {
                return bad(format!(
                    "step {} waits for {a} of the same job array",
                    st.id
                ));
            }
        }
        if let Some(g) = &st.array {
            if let Some(other) = seen.values().find(|o| o.array.as_ref() == Some(g)) {
                if other.kind != st.kind {
                    return bad(format!(
                        "array {g} mixes kinds ({} and {})",
                        other.id, st.id
                    ));
                }
            }
        }
        if seen.insert(&st.id, st).is_some() {
            return bad(format!("step id {} appears twice", st.id));
        }
    }
    Ok(())
}
