//! Prototxt (protobuf text format) parsing through prost-reflect, using the descriptor compiled
//! from `proto/caffe.proto` by `build.rs`, so the text parser and the binary decoder share one
//! schema.

use super::proto::NetParameter;
use anyhow::{bail, Context, Result};
use prost_reflect::{DescriptorPool, DynamicMessage};
use std::path::Path;
use std::sync::OnceLock;

static DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/caffe_descriptor.bin"));

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTOR).expect("descriptor compiled by build.rs is valid")
    })
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.chars().count(), |p| before[p + 1..].chars().count())
        + 1;
    (line, col)
}

/// Parse prototxt text; `origin` names the file in error messages.
pub fn parse_net_text(text: &str, origin: &str) -> Result<NetParameter> {
    let desc = pool()
        .get_message_by_name("caffe.NetParameter")
        .expect("NetParameter is in the schema");
    let msg = match DynamicMessage::parse_text_format(desc, text) {
        Ok(m) => m,
        Err(e) => {
            use miette::Diagnostic;
            let offset = e
                .labels()
                .and_then(|mut l| l.next())
                .map(|l| l.offset())
                .unwrap_or(text.len());
            let (line, col) = line_col(text, offset);
            let token: String = text[offset.min(text.len())..]
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '{' && *c != ':')
                .take(40)
                .collect();
            let hint = if e.to_string().contains("field") {
                " (nnquant knows the fields of Caffe's caffe.proto; a field from a Caffe fork is not supported)"
            } else {
                ""
            };
            bail!(
                "{origin}:{line}:{col}: prototxt syntax error: {e}{}{hint}",
                if token.is_empty() {
                    String::new()
                } else {
                    format!(" at '{token}'")
                }
            );
        }
    };
    msg.transcode_to::<NetParameter>()
        .with_context(|| format!("{origin}: prototxt does not fit Caffe's NetParameter schema"))
}

/// Read and parse a prototxt file.
pub fn read_net_file(path: &Path) -> Result<NetParameter> {
    let bytes = crate::fsio::read_capped(path, "the prototxt file", crate::fsio::TEXT_STREAM_CAP)?;
    if bytes.is_empty() {
        bail!("the prototxt file {} is empty", path.display());
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a text prototxt (invalid UTF-8 at byte {}); did you pass a binary .caffemodel as the model? Give the .prototxt as the model and the .caffemodel with --weights",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    if text.contains('\0') {
        bail!("{} is not a text prototxt (it contains NUL bytes); give the .prototxt as the model and the weights with --weights", path.display());
    }
    parse_net_text(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_error_reports_line_and_column() {
        let txt = "name: \"x\"\nlayer {\n  name: \"a\"\n  type: \"ReLU\"\n  bottom: @\n}\n";
        let e = parse_net_text(txt, "net.prototxt").unwrap_err().to_string();
        assert!(e.starts_with("net.prototxt:5:11:"), "{e}");
    }

    #[test]
    fn unknown_field_is_reported_with_position() {
        let txt = "layer {\n  name: \"a\"\n  colour: 3\n}\n";
        let e = parse_net_text(txt, "n").unwrap_err().to_string();
        assert!(e.starts_with("n:3:3:"), "{e}");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn parses_legacy_and_new_fields() {
        let txt = r#"name: "t" input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
            layer { name: "c" type: "Convolution" bottom: "data" top: "c"
              convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 pad_h: 1 stride: 2 dilation: 1 group: 1
                weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } }
              param { lr_mult: 1 decay_mult: 1 } }
            layer { name: "p" type: "Pooling" bottom: "c" top: "p"
              pooling_param { pool: AVE global_pooling: true round_mode: FLOOR } }
            layers { name: "old" type: RELU bottom: "p" top: "p" }"#;
        let net = parse_net_text(txt, "t").unwrap();
        assert_eq!(net.input_dim, vec![1, 3, 8, 8]);
        assert_eq!(net.layer.len(), 2);
        assert_eq!(
            net.layer[0].convolution_param.as_ref().unwrap().kernel_h,
            Some(3)
        );
        assert_eq!(net.layers.len(), 1);
    }
}
