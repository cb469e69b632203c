//! `mesh-cli policy set|get|rm <id>|--default`: an agent's policy, or the mesh-wide default, in
//! KV bucket `mesh-policy`. Every change is validated before it is written, confirmed by every
//! live gateway replica, and recorded in the audit trail with what it was before and after.
//!
//! `set` replaces the key's policy with exactly the fields given: a field not given is unset
//! there (for an agent, the default's value then applies). `--merge` keeps the current policy's
//! fields that are not given, and `--unset FIELD` removes one.

use std::time::Duration;

use mesh_schemas::policy::{parse_duration, DEFAULT_POLICY_KEY};
use mesh_schemas::{AgentId, OnBreach, OnUnreachable, Policy, PolicyRecord};
use serde::Serialize;

use crate::error::CliError;
use crate::mesh::Mesh;
use crate::output;
use crate::policies::{self, Edit, Stored};
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// Set a policy: exactly the fields given (or, with --merge, the given fields over the
    /// current ones). Validated before it is written; returns when every live gateway replica
    /// applies it.
    Set(Box<SetArgs>),
    /// Show a policy, and for an agent the default and the effective (merged) policy.
    Get(GetArgs),
    /// Remove a policy (an agent then follows the default).
    Rm(RmArgs),
}

/// Whose policy: one agent, or the mesh-wide default.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// The agent whose policy it is.
    #[arg(value_parser = super::agent_id, value_name = "AGENT")]
    pub agent: Option<AgentId>,
    /// The mesh-wide default policy (key `_default`), under every agent's own.
    #[arg(long)]
    pub default: bool,
}

impl Target {
    /// The KV key: the agent id, or `_default`.
    pub fn key(&self) -> &str {
        match &self.agent {
            Some(id) if !self.default => id.as_str(),
            _ => DEFAULT_POLICY_KEY,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct SetArgs {
    #[command(flatten)]
    pub target: Target,
    /// Keep the current policy's fields that are not given here (default: replace the whole
    /// policy with exactly the fields given).
    #[arg(long)]
    pub merge: bool,
    /// Remove this field from the policy (with --merge; repeatable), e.g. --unset rate.
    #[arg(long, value_name = "FIELD", value_parser = field_name, requires = "merge")]
    pub unset: Vec<&'static str>,
    /// Who is acting; defaults to user@host.
    #[arg(long, value_name = "WHO")]
    pub by: Option<String>,
    /// Why, for the audit trail.
    #[arg(long)]
    pub reason: Option<String>,
    /// How long to wait for the gateway replicas to apply it (e.g. 5s); also
    /// MESH_FENCE_TIMEOUT.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// The policy's fields (last, so that their help heading does not take in the flags
    /// above).
    #[command(flatten)]
    pub fields: Fields,
}

#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RmArgs {
    #[command(flatten)]
    pub target: Target,
    /// Who is acting; defaults to user@host.
    #[arg(long, value_name = "WHO")]
    pub by: Option<String>,
    /// Why, for the audit trail.
    #[arg(long)]
    pub reason: Option<String>,
    /// How long to wait for the gateway replicas to apply it (e.g. 5s); also
    /// MESH_FENCE_TIMEOUT.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
}

/// One flag per policy field. Values are checked by `Policy::validate`, which names the field.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Policy fields (unset: no limit, or the default policy's value)")]
pub struct Fields {
    /// Sustained rate of the agent's outbound intents, <count>/<s|m|h>, e.g. 10/s. Over it,
    /// deliveries from the agent wait; nothing is dropped.
    #[arg(long, value_name = "N/UNIT", allow_hyphen_values = true)]
    pub rate: Option<String>,
    /// Intents the agent may send at once above the rate (needs --rate; default: the
    /// per-second rate).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub burst: Option<u32>,
    /// Outbound intents per UTC clock hour, counted mesh-wide before delivery.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_intents_per_hour: Option<u64>,
    /// Outbound intents per UTC day.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_intents_per_day: Option<u64>,
    /// Cost ceiling in USD since the last resume: Mesh-Cost of its intents plus heartbeat
    /// reports, e.g. 50.
    #[arg(long, value_name = "USD", value_parser = usd, allow_hyphen_values = true)]
    pub max_cost_usd: Option<f64>,
    /// Cost ceiling in USD per UTC day.
    #[arg(long, value_name = "USD", value_parser = usd, allow_hyphen_values = true)]
    pub max_cost_usd_per_day: Option<f64>,
    /// What crossing a cap or ceiling does: kill (the default), block (429 until the window
    /// rolls) or observe (deliver, and record what would have happened).
    #[arg(long, value_name = "ACTION", value_parser = on_breach)]
    pub on_breach: Option<OnBreach>,
    /// Actions the agent may send (glob over dot-separated tokens: * one token, > the rest);
    /// repeatable. Anything else is refused with 403.
    #[arg(long, value_name = "GLOB")]
    pub allow_send: Vec<String>,
    /// Actions the agent may not send; wins over --allow-send; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub deny_send: Vec<String>,
    /// Actions the agent may receive; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub allow_receive: Vec<String>,
    /// Actions the agent may not receive; wins over --allow-receive; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub deny_receive: Vec<String>,
    /// Heartbeat silence after which the agent is degraded, e.g. 30s (default 30s).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub degraded_after: Option<String>,
    /// Heartbeat silence after which the agent is unreachable, e.g. 2m (default 2m).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub unreachable_after: Option<String>,
    /// What going unreachable does: alert (the default) or kill.
    #[arg(long, value_name = "ACTION", value_parser = on_unreachable)]
    pub on_unreachable: Option<OnUnreachable>,
}

impl Fields {
    /// The policy with exactly these fields.
    pub fn to_policy(&self) -> Policy {
        let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        Policy {
            rate: self.rate.clone(),
            burst: self.burst,
            max_intents_per_hour: self.max_intents_per_hour,
            max_intents_per_day: self.max_intents_per_day,
            max_cost_usd_per_day: self.max_cost_usd_per_day,
            max_cost_usd: self.max_cost_usd,
            on_breach: self.on_breach,
            allow_send: list(&self.allow_send),
            deny_send: list(&self.deny_send),
            allow_receive: list(&self.allow_receive),
            deny_receive: list(&self.deny_receive),
            degraded_after: self.degraded_after.clone(),
            unreachable_after: self.unreachable_after.clone(),
            on_unreachable: self.on_unreachable,
        }
    }
}

/// Every policy field, in the order tables show them.
pub const FIELDS: [&str; 14] = [
    "rate",
    "burst",
    "max_intents_per_hour",
    "max_intents_per_day",
    "max_cost_usd",
    "max_cost_usd_per_day",
    "on_breach",
    "allow_send",
    "deny_send",
    "allow_receive",
    "deny_receive",
    "degraded_after",
    "unreachable_after",
    "on_unreachable",
];

/// A field name, as `max_cost_usd` or `max-cost-usd`.
fn field_name(s: &str) -> Result<&'static str, String> {
    let s = s.trim().replace('-', "_");
    FIELDS
        .iter()
        .find(|f| **f == s)
        .copied()
        .ok_or_else(|| format!("{s:?} is not a policy field ({})", FIELDS.join(", ")))
}

/// USD: `50`, `0.25` or `$50`. The sign and the range are `Policy::validate`'s to check.
fn usd(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let t = t.strip_prefix('$').unwrap_or(t);
    t.parse::<f64>()
        .map_err(|_| format!("{s:?} is not an amount of USD, e.g. 50 or 0.25"))
}

fn on_breach(s: &str) -> Result<OnBreach, String> {
    match s.trim() {
        "kill" => Ok(OnBreach::Kill),
        "block" => Ok(OnBreach::Block),
        "observe" => Ok(OnBreach::Observe),
        _ => Err(format!("{s:?} is not kill, block or observe")),
    }
}

fn on_unreachable(s: &str) -> Result<OnUnreachable, String> {
    match s.trim() {
        "alert" => Ok(OnUnreachable::Alert),
        "kill" => Ok(OnUnreachable::Kill),
        _ => Err(format!("{s:?} is not alert or kill")),
    }
}

/// Removes `field` from `p`.
fn unset(p: &mut Policy, field: &str) {
    match field {
        "rate" => p.rate = None,
        "burst" => p.burst = None,
        "max_intents_per_hour" => p.max_intents_per_hour = None,
        "max_intents_per_day" => p.max_intents_per_day = None,
        "max_cost_usd" => p.max_cost_usd = None,
        "max_cost_usd_per_day" => p.max_cost_usd_per_day = None,
        "on_breach" => p.on_breach = None,
        "allow_send" => p.allow_send = None,
        "deny_send" => p.deny_send = None,
        "allow_receive" => p.allow_receive = None,
        "deny_receive" => p.deny_receive = None,
        "degraded_after" => p.degraded_after = None,
        "unreachable_after" => p.unreachable_after = None,
        "on_unreachable" => p.on_unreachable = None,
        _ => {}
    }
}

pub async fn run(args: Args, ctx: &mut Ctx) -> Result<(), CliError> {
    match args.action {
        Action::Set(a) => set(*a, ctx).await,
        Action::Get(a) => get(a, ctx).await,
        Action::Rm(a) => rm(a, ctx).await,
    }
}

/// The `--timeout` of `set` and `rm`: a flag-layer value of `fence_timeout`.
pub fn timeout(args: &Args) -> Option<Duration> {
    match &args.action {
        Action::Set(a) => a.timeout,
        Action::Rm(a) => a.timeout,
        Action::Get(_) => None,
    }
}

fn reason(what: &str, extra: &Option<String>) -> String {
    match extra.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => format!("{what}: {r}"),
        _ => what.to_string(),
    }
}

async fn set(args: SetArgs, ctx: &mut Ctx) -> Result<(), CliError> {
    let key = args.target.key().to_string();
    let given = args.fields.to_policy();
    let invalid = |source| CliError::InvalidPolicy {
        key: key.clone(),
        source,
    };
    if !args.merge {
        if given == Policy::default() {
            return Err(CliError::Usage(format!(
                "no policy field given for {key} (e.g. --max-intents-per-hour 500); to remove \
                 the policy, use `mesh-cli policy rm`"
            )));
        }
        // Checked before connecting: a bad value never needs a server to be refused.
        given.validate().map_err(invalid)?;
    }
    let by = args.by.unwrap_or_else(|| super::operator(&ctx.env));
    let mesh = Mesh::open(ctx.cfg.clone()).await?;
    let edit = Edit {
        key: &key,
        by: &by,
        reason: reason("policy set", &args.reason),
        timeout: ctx.cfg.fence_timeout,
    };
    let merge = args.merge;
    let unset_fields = args.unset.clone();
    let change = edit
        .apply(&mesh, |old: Option<&Stored>| {
            if !merge {
                return Ok(Some(given.clone()));
            }
            let base = match old.map(|s| &s.record) {
                None => Policy::default(),
                Some(Ok(r)) => r.policy.clone(),
                Some(Err(why)) => {
                    return Err(CliError::Usage(format!(
                        "the current policy of {key} cannot be read ({why}), so there is \
                         nothing to merge with; set it without --merge"
                    )))
                }
            };
            let mut next = given.merged_over(&base);
            for field in &unset_fields {
                unset(&mut next, field);
            }
            if next == Policy::default() {
                return Err(CliError::Usage(format!(
                    "the policy of {key} would have no field left; to remove it, use \
                     `mesh-cli policy rm`"
                )));
            }
            next.validate().map_err(invalid)?;
            Ok(Some(next))
        })
        .await?;
    report(change, ctx)
}

async fn rm(args: RmArgs, ctx: &mut Ctx) -> Result<(), CliError> {
    let key = args.target.key().to_string();
    let by = args.by.unwrap_or_else(|| super::operator(&ctx.env));
    let mesh = Mesh::open(ctx.cfg.clone()).await?;
    let edit = Edit {
        key: &key,
        by: &by,
        reason: reason("policy removed", &args.reason),
        timeout: ctx.cfg.fence_timeout,
    };
    let change = edit.apply(&mesh, |_| Ok(None)).await?;
    report(change, ctx)
}

/// Prints a change and turns a missing confirmation into exit code 3.
fn report(change: policies::Change, ctx: &mut Ctx) -> Result<(), CliError> {
    if ctx.out.is_json() {
        ctx.out.json(&change)?;
    } else {
        ctx.out.line(&change.summary())?;
    }
    if change.confirmed {
        Ok(())
    } else {
        Err(CliError::PolicyUnconfirmed {
            key: change.key.clone(),
            live: change.replicas.live.len(),
            missing: change.replicas.missing.clone(),
            timeout: ctx.cfg.fence_timeout,
        })
    }
}

/// A stored policy as `get` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Shown {
    /// The key: an agent id or `_default`.
    pub key: String,
    /// The record (policy, who set it, when); `None` when the key has none.
    pub record: Option<PolicyRecord>,
    /// Its KV revision.
    pub revision: Option<u64>,
    /// Why the stored value cannot be used, when it cannot (gateways ignore it and keep the
    /// last valid policy they had).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

impl Shown {
    fn new(key: &str, stored: Option<Stored>) -> Shown {
        let (record, revision, unreadable) = match stored {
            None => (None, None, None),
            Some(s) => match s.record {
                Ok(r) => (Some(r), Some(s.revision), None),
                Err(why) => (None, Some(s.revision), Some(why)),
            },
        };
        Shown {
            key: key.to_string(),
            record,
            revision,
            unreadable,
        }
    }

    fn policy(&self) -> Policy {
        self.record
            .as_ref()
            .map(|r| r.policy.clone())
            .unwrap_or_default()
    }

    /// `set by WHO at TIME (revision N)`, `none`, or why it cannot be read.
    fn describe(&self) -> String {
        match (&self.record, &self.unreadable) {
            (Some(r), _) => format!(
                "set by {} at {} (revision {})",
                if r.by.is_empty() { "?" } else { &r.by },
                output::timestamp(r.at_unix_ms),
                self.revision.unwrap_or(0)
            ),
            (None, Some(why)) => format!(
                "UNREADABLE (revision {}): {why}; gateways ignore it and keep the last valid \
                 policy; fix it with `mesh-cli policy set`",
                self.revision.unwrap_or(0)
            ),
            (None, None) => "none".to_string(),
        }
    }
}

/// What `get` prints.
#[derive(Clone, Debug, Serialize)]
pub struct View {
    /// The policy asked for.
    pub policy: Shown,
    /// For an agent: the default policy under its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Shown>,
    /// The fields that apply (the agent's own over the default's).
    pub effective: Policy,
    /// Values the gateways use for fields that are unset everywhere.
    pub built_in: BuiltIn,
}

/// The gateways' values for fields no policy sets.
#[derive(Clone, Debug, Serialize)]
pub struct BuiltIn {
    pub on_breach: OnBreach,
    pub on_unreachable: OnUnreachable,
    /// The health thresholds in effect (set or derived), e.g. `30s`.
    pub degraded_after: String,
    pub unreachable_after: String,
}

impl BuiltIn {
    fn of(eff: &Policy) -> BuiltIn {
        let d = eff
            .degraded_after
            .as_deref()
            .and_then(|s| parse_duration("degraded_after", s).ok());
        let u = eff
            .unreachable_after
            .as_deref()
            .and_then(|s| parse_duration("unreachable_after", s).ok());
        let t = mesh_gateway::health::Thresholds::new(d, u);
        let human = |d: Duration| humantime::format_duration(d).to_string();
        BuiltIn {
            on_breach: eff.on_breach.unwrap_or_default(),
            on_unreachable: eff.on_unreachable.unwrap_or_default(),
            degraded_after: human(t.degraded_after),
            unreachable_after: human(t.unreachable_after),
        }
    }
}

async fn get(args: GetArgs, ctx: &mut Ctx) -> Result<(), CliError> {
    let key = args.target.key().to_string();
    let mesh = Mesh::open(ctx.cfg.clone()).await?;
    let view = view(&mesh, &key).await?;
    if ctx.out.is_json() {
        ctx.out.json(&view)?;
        return Ok(());
    }
    print_view(&view, ctx)
}

/// The policy of `key` (an agent id or `_default`), and for an agent the default and the
/// effective policy: what `policy get` and the console show.
pub async fn view(mesh: &Mesh, key: &str) -> Result<View, CliError> {
    let store = mesh.bucket(&mesh.cfg.names.policy_bucket).await?;
    let read = |k: &str| {
        let store = store.clone();
        let k = k.to_string();
        async move {
            match store {
                Some(s) => policies::read(&s, &k).await,
                None => Ok(None),
            }
        }
    };
    let policy = Shown::new(key, read(key).await?);
    let default = if key == DEFAULT_POLICY_KEY {
        None
    } else {
        Some(Shown::new(
            DEFAULT_POLICY_KEY,
            read(DEFAULT_POLICY_KEY).await?,
        ))
    };
    let effective = match &default {
        Some(d) => policy.policy().merged_over(&d.policy()),
        None => policy.policy(),
    };
    Ok(View {
        built_in: BuiltIn::of(&effective),
        policy,
        default,
        effective,
    })
}

fn print_view(view: &View, ctx: &mut Ctx) -> Result<(), CliError> {
    let own = &view.policy;
    ctx.out
        .line(&format!("policy of {}: {}", own.key, own.describe()))?;
    let mut headers = vec!["FIELD".to_string(), own.key.to_uppercase()];
    let mut columns = vec![cells(&own.policy())];
    if let Some(d) = &view.default {
        ctx.out
            .line(&format!("default policy (_default): {}", d.describe()))?;
        headers.push("_DEFAULT".to_string());
        columns.push(cells(&d.policy()));
        headers.push("EFFECTIVE".to_string());
        columns.push(cells(&view.effective));
    }
    let built_in = built_in_cells(&view.built_in);
    let rows: Vec<Vec<String>> = FIELDS
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let mut row = vec![field.to_string()];
            let last = columns.len() - 1;
            for (c, column) in columns.iter().enumerate() {
                let cell = column[i].clone();
                row.push(match (&built_in[i], cell.as_str(), c == last) {
                    (Some(b), "-", true) => format!("({b})"),
                    _ => cell,
                });
            }
            row
        })
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    ctx.out.line("")?;
    ctx.out.table(&headers, &rows)?;
    ctx.out.line(
        "\n-: not set (no limit, or the default's value); (value): what the gateways use when \
         no policy sets it",
    )?;
    Ok(())
}

/// The policy's fields as table cells, in [`FIELDS`] order; `-` for unset.
fn cells(p: &Policy) -> Vec<String> {
    fn opt<T: ToString>(v: &Option<T>) -> String {
        v.as_ref().map_or_else(|| "-".to_string(), T::to_string)
    }
    let list = |v: &Option<Vec<String>>| v.as_ref().map_or("-".to_string(), |g| g.join(" "));
    let usd = |v: &Option<f64>| v.map_or("-".to_string(), |v| format!("${v}"));
    vec![
        opt(&p.rate),
        opt(&p.burst),
        opt(&p.max_intents_per_hour),
        opt(&p.max_intents_per_day),
        usd(&p.max_cost_usd),
        usd(&p.max_cost_usd_per_day),
        p.on_breach.map_or("-".into(), breach_str),
        list(&p.allow_send),
        list(&p.deny_send),
        list(&p.allow_receive),
        list(&p.deny_receive),
        opt(&p.degraded_after),
        opt(&p.unreachable_after),
        p.on_unreachable.map_or("-".into(), unreachable_str),
    ]
}

/// The built-in value of each field in [`FIELDS`] order, where there is one.
fn built_in_cells(b: &BuiltIn) -> Vec<Option<String>> {
    let mut v = vec![None; FIELDS.len()];
    v[6] = Some(breach_str(b.on_breach));
    v[11] = Some(b.degraded_after.clone());
    v[12] = Some(b.unreachable_after.clone());
    v[13] = Some(unreachable_str(b.on_unreachable));
    v
}

fn breach_str(b: OnBreach) -> String {
    match b {
        OnBreach::Kill => "kill",
        OnBreach::Block => "block",
        OnBreach::Observe => "observe",
    }
    .to_string()
}

fn unreachable_str(u: OnUnreachable) -> String {
    match u {
        OnUnreachable::Alert => "alert",
        OnUnreachable::Kill => "kill",
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_exactly_those_fields() {
        let f = Fields {
            rate: Some("10/s".into()),
            max_cost_usd: Some(50.0),
            allow_send: vec!["deploy.*".into(), "read.>".into()],
            ..Fields::default()
        };
        let p = f.to_policy();
        assert_eq!(p.rate.as_deref(), Some("10/s"));
        assert_eq!(p.max_cost_usd, Some(50.0));
        assert_eq!(
            p.allow_send,
            Some(vec!["deploy.*".to_string(), "read.>".to_string()])
        );
        assert_eq!(p.deny_send, None);
        assert_eq!(p.burst, None);
    }

    #[test]
    fn field_names_and_values_parse() {
        assert_eq!(field_name("max-cost-usd"), Ok("max_cost_usd"));
        assert_eq!(field_name("rate"), Ok("rate"));
        assert!(field_name("rates").is_err());
        assert_eq!(usd("$50"), Ok(50.0));
        assert_eq!(usd("0.25"), Ok(0.25));
        assert_eq!(usd("-1"), Ok(-1.0)); // refused later by validate, naming the field
        assert!(usd("fifty").is_err());
        assert_eq!(on_breach("observe"), Ok(OnBreach::Observe));
        assert!(on_breach("explode").is_err());
        assert_eq!(on_unreachable("kill"), Ok(OnUnreachable::Kill));
        let mut p = Policy {
            rate: Some("1/s".into()),
            deny_receive: Some(vec!["x".into()]),
            ..Policy::default()
        };
        for f in FIELDS {
            unset(&mut p, f);
        }
        assert_eq!(p, Policy::default());
        assert_eq!(cells(&Policy::default()).len(), FIELDS.len());
    }
}
