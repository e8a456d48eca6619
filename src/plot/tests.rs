//! The plot's escaping against hostile names, and an SVG a real XML parser reads.

use super::*;
use serde_json::json;

fn hostile() -> Graph {
    Graph::from_json(
        "flow of a\"b",
        &json!({
            "nodes": [
                {"job": "a\"b", "trigger_rule": "all_success", "state": "succeeded"},
                {"job": "<script>alert(1)</script>", "trigger_rule": "one_failed", "state": "failed"},
                {"job": "back\\slash\nnew line\u{1}", "trigger_rule": "all_done", "state": null},
            ],
            "edges": [
                {"upstream": "a\"b", "job": "<script>alert(1)</script>", "condition": "$.x == \"y\" && $.n > 0"},
                {"upstream": "a\"b", "job": "back\\slash\nnew line\u{1}", "condition": null},
                {"upstream": "a\"b", "job": "not a node", "condition": null},
            ],
        }),
    )
}

#[test]
fn dot_quotes_every_name_and_label() {
    let dot = hostile().dot();
    assert!(dot.starts_with("digraph \"flow of a\\\"b\" {\n"), "{dot}");
    assert!(
        dot.contains("  \"a\\\"b\" [label=\"a\\\"b\\nsucceeded\", fillcolor=\"#b7e4a7\"];"),
        "{dot}"
    );
    assert!(dot.contains("\"<script>alert(1)</script>\" [label=\"<script>alert(1)</script>\\n(one_failed)\\nfailed\""), "{dot}");
    assert!(dot.contains("\"back\\\\slash\\nnew line\u{1}\""), "{dot}");
    assert!(
        dot.contains(
            "\"a\\\"b\" -> \"<script>alert(1)</script>\" [label=\"$.x == \\\"y\\\" && $.n > 0\"];"
        ),
        "{dot}"
    );
    assert!(
        !dot.contains("not a node"),
        "an edge to an unknown node was drawn: {dot}"
    );
    // Every quoted string closes on the same line: no name can end a string early.
    for line in dot.lines().filter(|l| l.contains('"')) {
        let mut open = false;
        let mut escaped = false;
        for c in line.chars() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => open = !open,
                _ => {}
            }
        }
        assert!(!open, "unbalanced quotes: {line}");
    }
}

#[test]
fn quoting_keeps_names_apart() {
    // A line break and a backslash followed by n must not become the same identifier.
    assert_ne!(quote("a\nb"), quote("a\\nb"));
    assert_eq!(quote("a\nb"), "\"a\\nb\"");
    assert_eq!(quote("a\\nb"), "\"a\\\\nb\"");
    assert_eq!(quote("x\\"), "\"x\\\\\"");
}

#[test]
fn svg_is_xml_with_every_label_as_text() {
    let svg = hostile().svg().unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let text: String = doc
        .descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect();
    assert!(text.contains("a\"b"), "{text}");
    assert!(text.contains("<script>alert(1)</script>"), "{text}");
    assert!(text.contains("back\\slash"), "{text}");
    assert!(text.contains("new line\u{FFFD}"), "{text}");
    assert!(text.contains("$.x == \"y\" && $.n > 0"), "{text}");
    assert!(!doc.descendants().any(|n| n.tag_name().name() == "script"));
}

#[test]
fn svg_of_nothing_is_an_error() {
    let empty = Graph::from_json("x", &json!({"nodes": [], "edges": []}));
    assert!(empty.svg().is_err());
}

/// Ten ranks of ten jobs, each after every job of the rank before, edges listed sinks first:
/// 10^9 paths. The layout crate walks every path from an edge's head when it adds the edge;
/// fed in this order (as a database may list them) that walk never ended.
#[test]
fn svg_of_a_dense_flow_is_drawn_at_once() {
    let mut nodes = vec![Node {
        job: "root".into(),
        trigger_rule: "all_success".into(),
        state: None,
        foreach: None,
        items: None,
    }];
    let mut edges = Vec::new();
    for rank in 0..10 {
        for i in 0..10 {
            let job = format!("r{rank}j{i}");
            nodes.push(Node {
                job: job.clone(),
                trigger_rule: "all_success".into(),
                state: None,
                foreach: None,
                items: None,
            });
            let ups: Vec<String> = if rank == 0 {
                vec!["root".into()]
            } else {
                (0..10).map(|k| format!("r{}j{k}", rank - 1)).collect()
            };
            for upstream in ups {
                edges.push(Edge {
                    upstream,
                    job: job.clone(),
                    condition: None,
                });
            }
        }
    }
    edges.reverse();
    let graph = Graph {
        title: "dense".into(),
        nodes,
        edges,
    };
    let started = std::time::Instant::now();
    let svg = graph.svg().unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let text: String = doc.descendants().filter_map(|n| n.text()).collect();
    assert!(text.contains("r9j9") && text.contains("root"));
}

/// A fan-out member is one node whose label counts its items; before it has items (or in a
/// root's graph) it says its `foreach`.
#[test]
fn a_fan_out_member_is_one_node_with_its_counts() {
    let graph = Graph::from_json(
        "fan",
        &json!({
            "nodes": [
                {"job": "list", "trigger_rule": "all_success", "state": "succeeded"},
                {"job": "transform", "trigger_rule": "all_success", "state": "running",
                 "foreach": "$.list.files[*]", "items": 10, "items_succeeded": 3,
                 "items_failed": 1, "items_running": 6, "items_pending": 0},
                {"job": "empty", "trigger_rule": "all_done", "state": "skipped",
                 "foreach": "$.none[*]", "items": 0},
                {"job": "later", "trigger_rule": "all_success", "foreach": "$.x[*]"},
                {"job": "stopped", "trigger_rule": "all_success", "state": "cancelled",
                 "foreach": "$.y[*]", "items": 5, "items_succeeded": 0, "items_failed": 1,
                 "items_running": 0, "items_pending": 0},
            ],
            "edges": [
                {"upstream": "list", "job": "transform", "condition": null},
                {"upstream": "list", "job": "empty", "condition": null},
                {"upstream": "transform", "job": "later", "condition": null},
            ],
        }),
    );
    let dot = graph.dot();
    assert!(
        dot.contains(
            "\"transform\" [label=\"transform ×10\\n3 succeeded, 1 failed, 6 running\\nrunning\""
        ),
        "{dot}"
    );
    assert!(
        dot.contains("\"empty\" [label=\"empty ×0\\n(all_done)\\nno items\\nskipped\""),
        "{dot}"
    );
    assert!(
        dot.contains("\"later\" [label=\"later\\nforeach $.x[*]\""),
        "{dot}"
    );
    assert!(
        dot.contains("\"stopped\" [label=\"stopped ×5\\n1 failed, 4 not run\\ncancelled\""),
        "{dot}"
    );
    assert_eq!(
        dot.matches("[label=").count(),
        5,
        "one label per job, none per item: {dot}"
    );
    let svg = graph.svg().unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let text: String = doc.descendants().filter_map(|n| n.text()).collect();
    assert!(text.contains("transform ×10"), "{text}");
    assert!(text.contains("3 succeeded, 1 failed, 6 running"), "{text}");
}

#[test]
fn the_same_flow_draws_the_same_bytes() {
    let graph = Graph {
        title: "flow".to_string(),
        nodes: ["a", "b"]
            .iter()
            .map(|job| Node {
                job: job.to_string(),
                trigger_rule: "all_success".to_string(),
                state: Some("succeeded".to_string()),
                foreach: None,
                items: None,
            })
            .collect(),
        edges: vec![Edge {
            job: "b".to_string(),
            upstream: "a".to_string(),
            condition: Some("$.rows > 0".to_string()),
        }],
    };
    let first = graph.svg().unwrap();
    for _ in 0..20 {
        assert_eq!(graph.svg().unwrap(), first);
    }
}
