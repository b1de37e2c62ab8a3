//! The drill's report: a table per fault kind on stdout, and the same as JSON and Markdown.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::checks::Findings;
use super::faults::{Fault, FaultKind};
use super::load::Ledger;
use crate::OpsError;

#[derive(Serialize)]
pub struct KindRow {
    pub kind: &'static str,
    pub count: usize,
    /// Orders accepted while a fault of this kind was in force (injection to recovery).
    pub orders_accepted: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub recovery_ms_p50: Option<u64>,
    pub recovery_ms_max: Option<u64>,
    pub http_5xx: usize,
    /// Requests that got no HTTP answer (a replica killed or stopping under them).
    pub unanswered: usize,
}

pub struct Run {
    pub seed: u64,
    pub duration: Duration,
    pub rate: f64,
    pub replicas: usize,
    pub mode: &'static str,
}

fn within(faults: &[&Fault], at: Duration) -> bool {
    faults.iter().any(|f| {
        let (a, b) = f.window();
        at >= a && at <= b
    })
}

pub fn rows(ledger: &Ledger, faults: &[Fault], findings: &Findings) -> Vec<KindRow> {
    let mut by_kind: BTreeMap<FaultKind, Vec<&Fault>> = BTreeMap::new();
    for f in faults {
        by_kind.entry(f.kind).or_default().push(f);
    }
    by_kind
        .into_iter()
        .map(|(kind, fs)| {
            let mut ms: Vec<u64> = fs
                .iter()
                .filter_map(|f| f.recovery.map(|d| d.as_millis() as u64))
                .collect();
            ms.sort_unstable();
            let accepted: Vec<_> = ledger
                .accepted
                .iter()
                .filter(|(_, a)| within(&fs, a.at))
                .map(|(id, _)| id)
                .collect();
            KindRow {
                kind: kind.name(),
                count: fs.len(),
                orders_accepted: accepted.len(),
                lost: accepted
                    .iter()
                    .filter(|id| findings.lost.contains(id))
                    .count(),
                duplicated: accepted
                    .iter()
                    .filter(|id| findings.duplicated.contains(id))
                    .count(),
                recovery_ms_p50: ms.get(ms.len().saturating_sub(1) / 2).copied(),
                recovery_ms_max: ms.last().copied(),
                http_5xx: ledger
                    .failures
                    .iter()
                    .filter(|x| x.status.is_some() && within(&fs, x.at))
                    .count(),
                unanswered: ledger
                    .failures
                    .iter()
                    .filter(|x| x.status.is_none() && within(&fs, x.at))
                    .count(),
            }
        })
        .collect()
}

pub fn passed(findings: &Findings) -> bool {
    findings.invariants.values().all(|i| i.held)
}

pub fn to_json(
    run: &Run,
    ledger: &Ledger,
    faults: &[Fault],
    findings: &Findings,
) -> serde_json::Value {
    json!({
        "passed": passed(findings),
        "mode": run.mode,
        "seed": run.seed,
        "duration_s": run.duration.as_secs_f64(),
        "rate_per_s": run.rate,
        "replicas": run.replicas,
        "requests": ledger.requests,
        "orders": {
            "accepted": ledger.accepted.len(),
            "lost": findings.lost.len(),
            "duplicated": findings.duplicated.len(),
        },
        "faults": rows(ledger, faults, findings),
        "injections": faults.iter().map(|f| json!({
            "kind": f.kind.name(),
            "target": f.target,
            "at_s": (f.at.as_secs_f64() * 10.0).round() / 10.0,
            "recovery_ms": f.recovery.map(|d| d.as_millis() as u64),
            "problems": f.problems,
        })).collect::<Vec<_>>(),
        "invariants": findings.invariants.iter().map(|(k, v)| (k.to_string(), json!(v.held))).collect::<serde_json::Map<_, _>>(),
        "details": findings.invariants.iter().map(|(k, v)| (k.to_string(), json!(v.detail))).collect::<serde_json::Map<_, _>>(),
    })
}

fn ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

pub fn to_markdown(run: &Run, ledger: &Ledger, faults: &[Fault], findings: &Findings) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "# Drill report: {}\n\n{} mode, {} replica(s) of each node, {:.0} s at {} orders/s, seed {}. \
         {} orders accepted, {} lost, {} duplicated.\n\n",
        if passed(findings) { "PASSED" } else { "FAILED" },
        run.mode,
        run.replicas,
        run.duration.as_secs_f64(),
        run.rate,
        run.seed,
        ledger.accepted.len(),
        findings.lost.len(),
        findings.duplicated.len(),
    ));
    out.push_str("| fault | count | orders accepted | lost | duplicated | recovery p50 ms | recovery max ms | 5xx | unanswered |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in rows(ledger, faults, findings) {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.kind,
            r.count,
            r.orders_accepted,
            r.lost,
            r.duplicated,
            ms(r.recovery_ms_p50),
            ms(r.recovery_ms_max),
            r.http_5xx,
            r.unanswered
        ));
    }
    out.push_str("\n| invariant | held | seen |\n|---|---|---|\n");
    for (name, i) in &findings.invariants {
        out.push_str(&format!(
            "| {name} | {} | {} |\n",
            if i.held { "yes" } else { "**no**" },
            i.detail.replace('|', "\\|")
        ));
    }
    out.push_str("\n| at s | fault | target | recovery ms | problems |\n|---|---|---|---|---|\n");
    for f in faults {
        out.push_str(&format!(
            "| {:.1} | {} | {} | {} | {} |\n",
            f.at.as_secs_f64(),
            f.kind.name(),
            f.target,
            ms(f.recovery.map(|d| d.as_millis() as u64)),
            f.problems.join("; ").replace('|', "\\|")
        ));
    }
    out
}

pub fn write(path: &Path, json: &serde_json::Value, markdown: &str) -> Result<(), OpsError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(OpsError::io(format!("cannot create {}", dir.display())))?;
    }
    let text = serde_json::to_string_pretty(json).unwrap_or_default();
    std::fs::write(path, text).map_err(OpsError::io(format!("cannot write {}", path.display())))?;
    let md = path.with_extension("md");
    std::fs::write(&md, markdown)
        .map_err(OpsError::io(format!("cannot write {}", md.display())))?;
    Ok(())
}
