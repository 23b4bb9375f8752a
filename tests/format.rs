//! FORMAT.md is the contract: every number in it that the code defines is read back from the
//! text here and compared with the code, so that the two cannot drift apart again (the tensor
//! count once said 6 + 9 x layers while the weights held 8 + 11 x layers).

use cvq::archive::{MAGIC, MAX_NAME, VERSION};
use cvq::network::spec::{self, Kind};
use cvq::network::ModelSpec;
use cvq::predict::TOTAL_BITS;

fn format_md() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/FORMAT.md")).unwrap()
}

/// The tensors of a weights file for `spec`, in order: each int8 matrix then its scales.
fn file_tensors(spec: &ModelSpec) -> Vec<String> {
    let mut names = vec![];
    for (name, _, kind) in spec.tensors() {
        names.push(name.clone());
        if matches!(kind, Kind::Int8Rows) {
            names.push(format!("{name}.scale"));
        }
    }
    names
}

/// The row of the limits table (section 3.2.1) that starts with `quantity`: its limit cell.
fn limit(text: &str, quantity: &str) -> String {
    let row = text.lines().find(|l| l.starts_with(&format!("| {quantity}"))).unwrap_or_else(|| panic!("{quantity}"));
    row.split('|').nth(2).unwrap().trim().to_string()
}

#[test]
fn the_container_numbers_are_the_code_s() {
    let text = format_md();
    assert!(text.starts_with(&format!("# The cvq archive format, version {VERSION}\n")));
    assert!(text.contains(&format!("| magic | 4 bytes | `{}` |", std::str::from_utf8(MAGIC).unwrap())));
    assert!(text.contains(&format!("| version | 1 byte | `{VERSION}` |")));
    assert!(text.contains(&format!("varint length (1-{MAX_NAME})")));
    assert!(text.contains(&format!("a total of `T = 2^{TOTAL_BITS}`")));
    let formats = format!("the string `format` of the metadata, `{}` or `{}`", spec::FORMAT, spec::FORMAT_2);
    assert!(text.contains(&formats));
    let full = spec::FULL_REACH;
    assert!(text.contains(&format!("| `reach_rows`, `reach_cols` (second format) | 0..={}, 0..={} |", full.0, full.1)));
}

#[test]
fn the_tensor_count_and_order_are_the_code_s() {
    let text = format_md();
    // Every place that states the count as `A + B x layers` (or `*`) agrees with the spec.
    let mut stated = 0;
    for (i, _) in text.match_indices(" layers`") {
        let formula = &text[text[..i].rfind('`').unwrap() + 1..i];
        let Some((a, rest)) = formula.split_once(" + ") else { continue };
        let b = rest.trim_end_matches([' ', 'x', '*']).trim();
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        for layers in 1..=4 {
            let spec = ModelSpec::new(layers, 32, 2, 2, 64);
            assert_eq!(a + b * layers, file_tensors(&spec).len(), "`{formula}` at {layers} layers");
        }
        stated += 1;
    }
    assert!(stated >= 2, "FORMAT.md states the tensor count in sections 3.2 and 4");

    // The tensor order, as section 4 lists it (layer 0 standing for every layer).
    let start = text.find("Tensor order (").unwrap();
    let list = &text[start..start + text[start..].find("Shapes:").unwrap()];
    let listed: Vec<&str> = list.split('`').skip(1).step_by(2).collect();
    let spec = ModelSpec::new(1, 32, 2, 2, 64);
    let names: Vec<String> = file_tensors(&spec).into_iter().map(|n| n.replace("layers.0.", "layers.l.")).collect();
    let listed: Vec<&str> = listed.into_iter().filter(|n| names.iter().any(|m| m == n)).collect();
    assert_eq!(listed, names, "section 4's tensor order");
}

#[test]
fn the_limits_table_is_the_code_s() {
    let text = format_md();
    assert_eq!(limit(&text, "`head_dim`"), format!("<= {}", spec::MAX_HEAD_DIM));
    assert_eq!(limit(&text, "`width`"), format!("16..={}", spec::MAX_WIDTH));
    assert_eq!(limit(&text, "`mlp_width`"), format!("16..={}", spec::MAX_ROW));
    assert_eq!(limit(&text, "row scale"), format!("0..={}, finite", spec::MAX_ROW_SCALE));
    assert_eq!(limit(&text, "`context_frames`"), format!("1..={}", spec::MAX_CONTEXT_FRAMES));
    assert_eq!(limit(&text, "`layers`"), format!("1..={}", spec::MAX_LAYERS));
    // Every row of a matrix is at most MAX_ROW inputs: the widest is mlp.down's.
    assert!(text.contains(&format!("every matrix row (input width) is at most {}", thousands(spec::MAX_ROW))));
}

/// `n` with commas between thousands, as the text writes it.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
