//! A hot standby's refusals: the errors with which a replica turns down
//! what the primary would run, told apart from answers any server would
//! give, so that a refused read runs again on the primary unseen.

use crate::protocol::messages;

/// SQLSTATEs with which a hot standby refuses what the primary would run:
/// a write it could not see coming (25006 read-only transaction), a
/// recovery conflict (40001, 40P01), serializable isolation (0A000), and
/// functions that need a server not in recovery (55000). A read refused
/// with one of these before anything reached the client re-runs on the
/// primary; if the primary refuses it too, the client gets its answer.
const REPLICA_REFUSALS: [&str; 5] = ["25006", "40001", "40P01", "0A000", "55000"];

/// Refusals that show the statement itself needs the primary: it writes,
/// or calls a function that does. It counts as a write from then on.
pub(super) const STATEMENT_NEEDS_PRIMARY: [&str; 2] = ["25006", "55000"];

/// Whether an error with one of the [`REPLICA_REFUSALS`] codes is the
/// replica's refusal, not an answer any server would give. Some are not:
/// a statement prepared before its table changed shape (0A000 "cached plan
/// must not change result type", which a client that kept the old column
/// list must hear rather than get rows of the new shape from a re-run), or
/// currval/lastval before nextval (55000). Told apart by the server
/// routine that raised them (not translated, unlike the message), or by the
/// English message when a server sends no routine.
pub(super) fn is_replica_refusal(fields: &messages::ErrorFields) -> bool {
    let (code, message, routine) = (
        fields.code.as_str(),
        fields.message.as_str(),
        fields.routine.as_str(),
    );
    REPLICA_REFUSALS.contains(&code)
        && !(code == "0A000"
            && (routine == "RevalidateCachedQuery"
                || message.starts_with("cached plan must not change result type")))
        && !(code == "55000"
            && (matches!(routine, "currval_oid" | "lastval")
                || message.contains("not yet defined in this session")))
}

#[cfg(test)]
mod tests {
    use super::is_replica_refusal;
    use crate::protocol::messages::ErrorFields;

    fn error(code: &str, message: &str, routine: &str) -> ErrorFields {
        ErrorFields {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            routine: routine.into(),
        }
    }

    #[test]
    fn tells_a_replicas_refusal_from_postgres_own_answer() {
        let refused = [
            error(
                "25006",
                "cannot execute UPDATE in a read-only transaction",
                "PreventCommandIfReadOnly",
            ),
            error(
                "0A000",
                "cannot use serializable mode in a hot standby",
                "check_XactIsoLevel",
            ),
            error("55000", "recovery is in progress", "pg_current_wal_lsn"),
            error(
                "40001",
                "canceling statement due to conflict with recovery",
                "ProcessInterrupts",
            ),
        ];
        for e in &refused {
            assert!(is_replica_refusal(e), "{e:?}");
        }
        let answers = [
            error(
                "0A000",
                "cached plan must not change result type",
                "RevalidateCachedQuery",
            ),
            // Translated (lc_messages = 'de_DE'): the routine still tells.
            error(
                "0A000",
                "gecachter Plan darf den Ergebnistyp nicht ändern",
                "RevalidateCachedQuery",
            ),
            error(
                "55000",
                "currval of sequence \"s\" is not yet defined in this session",
                "currval_oid",
            ),
            error(
                "55000",
                "lastval ist in dieser Sitzung noch nicht definiert",
                "lastval",
            ),
            // No routine sent: the English message still tells.
            error("0A000", "cached plan must not change result type", ""),
            error("42P01", "relation \"x\" does not exist", "parserOpenTable"),
        ];
        for e in &answers {
            assert!(!is_replica_refusal(e), "{e:?}");
        }
    }
}
