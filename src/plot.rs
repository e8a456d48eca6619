//! Drawing a flow: its graph (jobs, and the edges "job runs after upstream" labelled with
//! their condition), optionally with each member's state, as Graphviz dot text or as SVG
//! laid out in-process by the `layout` crate (no Graphviz needed on the host).
//!
//! Owns the escaping that keeps hostile job names (quotes, backslashes, `<script>`, control
//! characters) from breaking either format: dot gets quoted, escaped identifiers and labels;
//! SVG gets text that is valid XML character data. Reads nothing from the database: the
//! caller hands it the nodes and edges (`Graph::from_json`, the shape of
//! `flows_graph_job.sql` and `flows_graph_run.sql`).

use std::collections::HashMap;
use std::fmt::Write as _;

use anyhow::{Result, bail};
use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::style::StyleAttr;
use layout::std_shapes::render::get_shape_size;
use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
use layout::topo::layout::VisualGraph;
use serde_json::Value;

/// A flow to draw: its title, its jobs and its edges.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub title: String,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// One job of the flow; `state` and `items` only when drawing a flow run.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub job: String,
    pub trigger_rule: String,
    pub state: Option<String>,
    /// The jsonpath of a fan-out member (one run per item).
    pub foreach: Option<String>,
    /// A fan-out member's items once it was decided: one node for all of them.
    pub items: Option<Items>,
}

/// A fan-out member's items, counted over the latest attempt of each (`sisy.flow_members`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Items {
    pub total: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub running: i64,
    pub pending: i64,
}

impl Items {
    /// The counts of a member row (`items`, `items_succeeded`, …); None for a member
    /// without items (no foreach, or not decided yet).
    pub fn from_json(m: &Value) -> Option<Items> {
        let n = |k: &str| m[k].as_i64().unwrap_or(0);
        Some(Items {
            total: m["items"].as_i64()?,
            succeeded: n("items_succeeded"),
            failed: n("items_failed"),
            running: n("items_running"),
            pending: n("items_pending"),
        })
    }

    /// The items in none of the four counts: cancelled or skipped (a cancelled flow run's
    /// items that had not started).
    pub fn not_run(&self) -> i64 {
        (self.total - self.succeeded - self.failed - self.running - self.pending).max(0)
    }

    /// The counts after `succeeded` that are not zero: `[(1, "failed"), (6, "running")]`.
    pub fn others(&self) -> Vec<(i64, &'static str)> {
        [
            (self.failed, "failed"),
            (self.running, "running"),
            (self.pending, "pending"),
            (self.not_run(), "not run"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .collect()
    }

    /// "3 succeeded, 1 failed, 6 running": the counts that are not zero ("no items" for an
    /// empty list).
    pub fn counts(&self) -> String {
        if self.total == 0 {
            return "no items".to_string();
        }
        let first = (self.succeeded > 0).then_some((self.succeeded, "succeeded"));
        let parts: Vec<String> = first
            .into_iter()
            .chain(self.others())
            .map(|(n, word)| format!("{n} {word}"))
            .collect();
        parts.join(", ")
    }
}

/// "`job` runs after `upstream`", when `condition` (a jsonpath) holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub upstream: String,
    pub job: String,
    pub condition: Option<String>,
}

/// Font size of the SVG's labels, in pixels.
const FONT: usize = 14;

/// The largest flow (jobs + edges) whose SVG layout looks for fewer edge crossings: the
/// crate's search compares every pair of nodes in each rank, 50 times over, which takes
/// minutes for a flow of a few hundred labelled edges; beyond this the layout is drawn as
/// ranked, at once.
const OPTIMIZE_UP_TO: usize = 400;

impl Graph {
    /// The graph of `{"nodes": [{job, trigger_rule, state?, foreach?, items?, items_succeeded?,
    /// …}], "edges": [{job, upstream, condition}]}`; edges whose ends are not nodes are left
    /// out.
    pub fn from_json(title: &str, v: &Value) -> Graph {
        let text = |v: &Value| v.as_str().map(str::to_string);
        let nodes: Vec<Node> = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| {
                Some(Node {
                    job: text(&n["job"])?,
                    trigger_rule: text(&n["trigger_rule"]).unwrap_or_default(),
                    state: text(&n["state"]),
                    foreach: text(&n["foreach"]),
                    items: Items::from_json(n),
                })
            })
            .collect();
        let known = |name: &str| nodes.iter().any(|n| n.job == name);
        let edges = v["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some(Edge {
                    upstream: text(&e["upstream"])?,
                    job: text(&e["job"])?,
                    condition: text(&e["condition"]),
                })
            })
            .filter(|e| known(&e.upstream) && known(&e.job))
            .collect();
        Graph {
            title: title.to_string(),
            nodes,
            edges,
        }
    }

    /// Graphviz dot: one quoted node per job (its name, a trigger rule other than the
    /// default, its state), filled with the colour of its state; one edge per dependency.
    pub fn dot(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph {} {{", quote(&self.title));
        out.push_str("  rankdir=LR;\n");
        out.push_str(
            "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#ffffff\", fontname=\"Helvetica\"];\n",
        );
        out.push_str("  edge [fontname=\"Helvetica\", fontsize=10];\n");
        for n in &self.nodes {
            let _ = writeln!(
                out,
                "  {} [label={}, fillcolor=\"{}\"];",
                quote(&n.job),
                quote(&n.label()),
                fill(n.state.as_deref())
            );
        }
        for e in &self.edges {
            let _ = write!(out, "  {} -> {}", quote(&e.upstream), quote(&e.job));
            if let Some(c) = &e.condition {
                let _ = write!(out, " [label={}]", quote(c));
            }
            out.push_str(";\n");
        }
        out.push_str("}\n");
        out
    }

    /// SVG, laid out left to right by the `layout` crate. Its text is escaped by the crate;
    /// characters XML cannot carry at all are replaced first. A layout the crate cannot
    /// make (it asserts on what it does not expect) is an error, not a crash.
    pub fn svg(&self) -> Result<String> {
        if self.nodes.is_empty() {
            bail!("the flow has no jobs to draw");
        }
        let Some(edges) = self.edges_in_order() else {
            bail!(
                "the flow's edges make a cycle, which sisy cannot draw: see `sisy jobs show` of its jobs"
            );
        };
        let optimize = self.nodes.len() + edges.len() <= OPTIMIZE_UP_TO;
        let graph = self.clone();
        // The panic hook is the process's: drawings made at once (the dashboard's requests)
        // take turns, or one could put back the silent hook another had set, for good.
        static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let turn = HOOK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let drawn = std::panic::catch_unwind(move || graph.lay_out(&edges, optimize));
        std::panic::set_hook(previous);
        drop(turn);
        match drawn {
            Ok(svg) => Ok(stable_styles(svg)),
            Err(_) => {
                bail!("the SVG layout of this flow failed: draw it with --format dot instead")
            }
        }
    }

    /// The edges as (upstream, job) node indices, ordered by the upstream's place in a
    /// topological order; None for a cycle (which the database refuses). The crate looks
    /// for a path back from each edge's head when it adds the edge, walking every path
    /// without remembering what it saw: in this order the head has no edges out yet, so
    /// each look is one step instead of a walk exponential in the depth of a dense flow.
    fn edges_in_order(&self) -> Option<Vec<(usize, usize, &Edge)>> {
        let index: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.job.as_str(), i))
            .collect();
        let mut succ = vec![Vec::new(); self.nodes.len()];
        let mut indegree = vec![0usize; self.nodes.len()];
        let mut edges = Vec::new();
        for e in &self.edges {
            let (Some(&u), Some(&j)) = (index.get(e.upstream.as_str()), index.get(e.job.as_str()))
            else {
                continue;
            };
            succ[u].push(j);
            indegree[j] += 1;
            edges.push((u, j, e));
        }
        // Kahn's algorithm: the place of each node in a topological order.
        let mut order: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| indegree[i] == 0)
            .collect();
        let mut next = 0;
        while next < order.len() {
            for &s in &succ[order[next]] {
                indegree[s] -= 1;
                if indegree[s] == 0 {
                    order.push(s);
                }
            }
            next += 1;
        }
        if order.len() < self.nodes.len() {
            return None;
        }
        let mut place = vec![0; self.nodes.len()];
        for (i, &n) in order.iter().enumerate() {
            place[n] = i;
        }
        edges.sort_by_key(|&(u, j, _)| (place[u], place[j]));
        Some(edges)
    }

    fn lay_out(&self, edges: &[(usize, usize, &Edge)], optimize: bool) -> String {
        let mut vg = VisualGraph::new(Orientation::LeftToRight);
        // The crate re-checks the whole graph for cycles after each edge it adds (a walk of
        // every path, per edge); the database has refused cycles already.
        vg.dag.set_validate(false);
        // Shapes are sized in the flipped direction, as the crate's own dot reader does.
        let dir = Orientation::LeftToRight.flip();
        let handles: Vec<_> = self
            .nodes
            .iter()
            .map(|n| {
                let shape = ShapeKind::new_box(&xml_text(&n.label()));
                let look = StyleAttr::new(
                    Color::fast("black"),
                    1,
                    Some(Color::fast(fill(n.state.as_deref()))),
                    5,
                    FONT,
                );
                let size = get_shape_size(dir, &shape, FONT, false);
                vg.add_node(Element::create(shape, look, dir, size))
            })
            .collect();
        for &(from, to, e) in edges {
            let label = xml_text(e.condition.as_deref().unwrap_or(""));
            vg.add_edge(Arrow::simple(&label), handles[from], handles[to]);
        }
        let mut svg = SVGWriter::new();
        vg.do_it(false, !optimize, false, &mut svg);
        svg.finalize()
    }
}

impl Node {
    /// What the node says: the job (with its number of items for a fan-out member), its
    /// trigger rule unless the default, its items counted (or its `foreach` before it has
    /// items), its state.
    fn label(&self) -> String {
        let mut label = self.job.clone();
        if let Some(items) = &self.items {
            let _ = write!(label, " ×{}", items.total);
        }
        if !self.trigger_rule.is_empty() && self.trigger_rule != "all_success" {
            let _ = write!(label, "\n({})", self.trigger_rule);
        }
        match (&self.items, &self.foreach) {
            (Some(items), _) => {
                let _ = write!(label, "\n{}", items.counts());
            }
            (None, Some(path)) => {
                let _ = write!(label, "\nforeach {path}");
            }
            (None, None) => {}
        }
        if let Some(state) = &self.state {
            let _ = write!(label, "\n{state}");
        }
        label
    }
}

/// The drawing with the lines of its `<style>` block sorted: the layout crate writes its
/// font classes from a hash map, in an order that changes from one run to the next, and the
/// same flow should give the same bytes (from `sisy flows plot` and the dashboard alike).
fn stable_styles(svg: String) -> String {
    let (Some(start), Some(end)) = (svg.find("<style>\n"), svg.find("</style>")) else {
        return svg;
    };
    let body = start + "<style>\n".len();
    if end < body {
        return svg;
    }
    let mut lines: Vec<&str> = svg[body..end].lines().collect();
    lines.sort_unstable();
    let mut out = String::with_capacity(svg.len());
    out.push_str(&svg[..body]);
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&svg[end..]);
    out
}

/// The title of a flow run's drawing, from the object `flows_graph_run.sql` returns.
pub fn run_title(id: i64, graph: &Value) -> String {
    let root = graph["root"].as_str().unwrap_or_default();
    let state = graph["state"].as_str().unwrap_or_default();
    format!("flow run {id} of {root} ({state})")
}

/// The fill colour of a member in `state` (None: a graph without states).
pub fn fill(state: Option<&str>) -> &'static str {
    match state {
        Some("succeeded") => "#b7e4a7",
        Some("running") => "#9ecae1",
        Some("pending") => "#fff3b0",
        Some("failed" | "timed_out" | "lost" | "killed" | "expired" | "upstream_failed") => {
            "#f4a6a6"
        }
        Some("skipped" | "cancelled") => "#d9d9d9",
        _ => "#ffffff",
    }
}

/// A dot quoted string (an identifier or a label): `"` and `\` escaped, line breaks as
/// `\n` (a line break in a label; in an identifier, two plain characters that no other
/// name maps to, since every `\` of the name itself is doubled).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text XML 1.0 can carry: control characters other than line breaks, and the two
/// non-characters U+FFFE and U+FFFF, become U+FFFD. (`<`, `&` and quotes are escaped by
/// the SVG writer itself.)
pub fn xml_text(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' => c,
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => '\u{FFFD}',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests;
