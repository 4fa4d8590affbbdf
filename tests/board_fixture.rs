//! The generated crate as a library in real firmware projects: the STM32F407 board fixture
//! (`testdata/board-stm32f407/`) links at its own addresses with its own memory.x and runs in
//! QEMU; C code calls `nnq_run` through the generated header; linker sections reach the code.

mod common;
use common::*;
use nnquant::fixed::sim::{Keep, Simulator};
use nnquant::model::NnqModel;
use nnquant::search::InputPrep;
use nnquant::verify::elf;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// The demo model quantized without a search.
fn quantized(dir: &Path) -> PathBuf {
    quantized_demo(dir).0
}

/// The fixture's synthetic image (`src/main.rs`: pixel i = (i·7 + 3) mod 256).
fn synthetic_image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// The simulator's output for one image.
fn simulate(model: &Path, image: &[u8]) -> Vec<i8> {
    let m = NnqModel::read(model).unwrap();
    let prep = InputPrep {
        mean_u8: m.input.mean_u8.clone(),
        scale: m.input.scale,
    };
    let q = prep
        .quantize(image, m.input.len(), m.input.frac_bits)
        .unwrap();
    let acts = Simulator::new(&m.graph)
        .unwrap()
        .run(&q, 1, &Keep::Outputs)
        .unwrap();
    acts.image(&m.graph.outputs[0], 0).unwrap().to_vec()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "gen" || name == "target" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "{what} failed: {out}\n{err}");
    out
}

/// `out v0 v1 … class c` → the values.
fn parse_out(stdout: &str) -> Vec<i8> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("out "))
        .unwrap_or_else(|| panic!("no output line in {stdout:?}"));
    line.split_whitespace()
        .skip(1)
        .take_while(|w| *w != "class")
        .map(|w| w.parse().unwrap())
        .collect()
}

#[test]
#[ignore = "needs the thumbv7em-none-eabihf target, crates.io and qemu-system-arm (run by .ci/run)"]
fn board_project_links_at_its_own_addresses_and_runs() {
    let f = Fixture::new();
    let model = quantized(&f.path("q"));
    let board = f.path("board");
    copy_dir(&repo("testdata/board-stm32f407"), &board);
    // A name that sorts first: a memory.x the library put on the linker path would be searched
    // before the board's own.
    let o = nnquant(&[
        &"codegen",
        &model,
        &"--out",
        &board.join("gen"),
        &"--crate-name",
        &"aaa-network",
        &"--target",
        &"cortex-m4",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let lib_toml = std::fs::read_to_string(board.join("gen/Cargo.toml")).unwrap();
    assert!(
        !lib_toml.contains("[workspace]"),
        "a library for a board project must not be its own workspace"
    );
    let target_dir = repo("target/board-fixture");
    run(
        Command::new("cargo")
            .args(["build", "--release"])
            .current_dir(&board)
            .env("CARGO_TARGET_DIR", &target_dir)
            .env_remove("RUSTFLAGS"),
        "building the board fixture",
    );
    let triple_dir = target_dir.join("thumbv7em-none-eabihf/release");
    let bin = triple_dir.join("board-stm32f407");
    let e = elf::parse(&std::fs::read(&bin).unwrap()).unwrap();
    let flash = 0x0800_0000u32..0x0810_0000;
    let ram = 0x2000_0000u32..0x2002_0000;
    // The vector table at the start of the board's flash, its reset vector pointing into flash.
    let vt = e.section(".vector_table").expect(".vector_table");
    assert_eq!(vt.addr, 0x0800_0000, "vector table address");
    let bytes = std::fs::read(&bin).unwrap();
    let word = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let (initial_sp, reset) = (word(vt.offset), word(vt.offset + 4));
    assert_eq!(
        initial_sp, 0x2002_0000,
        "initial stack pointer = end of the 128 KiB RAM"
    );
    assert!(
        flash.contains(&reset),
        "reset vector {reset:#x} not in flash"
    );
    assert_eq!(reset & 1, 1, "reset vector is a Thumb address");
    // (ELF symbols of Thumb functions carry the Thumb bit too.)
    assert_eq!(Some(&reset), e.symbols.get("Reset"), "reset vector = Reset");
    // RAM: .bss (with the arena) and the stack in 0x2000_0000.., the weights in flash.
    let bss = e.section(".bss").expect(".bss");
    assert!(ram.contains(&bss.addr), ".bss at {:#x}", bss.addr);
    assert_eq!(e.symbols.get("_stack_start"), Some(&0x2002_0000));
    let weights: Vec<(&String, &u32)> = e
        .symbols
        .iter()
        .filter(|(k, _)| k.contains("aaa_network7weights"))
        .collect();
    assert!(!weights.is_empty(), "no weight symbols in the ELF");
    for (k, v) in weights {
        assert!(flash.contains(v), "{k} at {v:#x} is not in flash");
    }
    // The library's build script put nothing on the link line (the board's memory.x is the only
    // one): no link search paths, no linker arguments.
    let mut scripts = 0;
    for d in std::fs::read_dir(triple_dir.join("build")).unwrap() {
        let d = d.unwrap().path();
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("aaa-network-") && d.join("output").is_file() {
            scripts += 1;
            let out = std::fs::read_to_string(d.join("output")).unwrap();
            assert!(
                !out.contains("rustc-link-search") && !out.contains("rustc-link-arg"),
                "the generated library's build script touched the link line:\n{out}"
            );
        }
    }
    assert!(scripts > 0, "no build-script output of the generated crate");
    // It runs: QEMU's netduinoplus2 (STM32F405, same flash/RAM addresses) boots it from
    // 0x08000000 and the network's output equals the simulator's.
    let qemu = run(
        Command::new("qemu-system-arm")
            .args([
                "-M",
                "netduinoplus2",
                "-cpu",
                "cortex-m4",
                "-nographic",
                "-semihosting-config",
                "enable=on,target=native",
                "-kernel",
            ])
            .arg(&bin)
            .stdin(std::process::Stdio::null()),
        "running the board fixture in QEMU",
    );
    let m = NnqModel::read(&model).unwrap();
    let expected = simulate(&model, &synthetic_image(m.input.len()));
    assert_eq!(parse_out(&qemu), expected, "QEMU output: {qemu}");
}

#[test]
fn c_api_runs_from_c_on_the_host() {
    let f = Fixture::new();
    let model = quantized(&f.path("q"));
    let gen = f.path("gen");
    let o = nnquant(&[
        &"codegen",
        &model,
        &"--out",
        &gen,
        &"--crate-name",
        &"nnq-c",
        &"--target",
        &"host",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let header = gen.join("include/nnq_c.h");
    assert!(header.is_file());
    // A wrapper crate makes the static library (the generated crate is no_std and brings no
    // panic handler; the wrapper has std's).
    let wrap = f.path("wrap");
    std::fs::create_dir_all(wrap.join("src")).unwrap();
    std::fs::write(
        wrap.join("Cargo.toml"),
        "[package]\nname = \"wrap\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\ncrate-type = [\"staticlib\"]\n\n\
         [dependencies]\nnnq-c = { path = \"../gen\", features = [\"c-api\"] }\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(wrap.join("src/lib.rs"), "pub use nnq_c::c_api::nnq_run;\n").unwrap();
    run(
        Command::new("cargo")
            .args(["build", "--release", "--quiet"])
            .current_dir(&wrap)
            .env("CARGO_TARGET_DIR", wrap.join("target")),
        "building the static library",
    );
    let m = NnqModel::read(&model).unwrap();
    let image = synthetic_image(m.input.len());
    std::fs::write(
        f.path("main.c"),
        r#"#include <stdio.h>
#include "nnq_c.h"
static int8_t arena[NNQ_ARENA_LEN];
int main(void) {
    uint8_t in[NNQ_INPUT_LEN];
    int8_t out[NNQ_OUTPUT_LEN];
    for (size_t i = 0; i < NNQ_INPUT_LEN; i++) in[i] = (uint8_t)(i * 7 + 3);
    if (nnq_arena_len() != NNQ_ARENA_LEN) return 3;
    if (nnq_run(in, out, NULL) != NNQ_ERR_NULL) return 4;
    int32_t r = nnq_run(in, out, arena);
    if (r != NNQ_OK) return 5;
    printf("out");
    for (size_t i = 0; i < NNQ_OUTPUT_LEN; i++) printf(" %d", out[i]);
    printf(" class\n");
    return 0;
}
"#,
    )
    .unwrap();
    let exe = f.path("c-main");
    run(
        Command::new("cc")
            .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(gen.join("include"))
            .arg(f.path("main.c"))
            .arg(wrap.join("target/release/libwrap.a"))
            .args(["-lpthread", "-ldl", "-lm", "-o"])
            .arg(&exe),
        "compiling the C program",
    );
    let out = run(&mut Command::new(&exe), "running the C program");
    assert_eq!(parse_out(&out), simulate(&model, &image));
}

#[test]
fn link_sections_reach_the_generated_code() {
    let f = Fixture::new();
    let model = quantized(&f.path("q"));
    let gen = f.path("gen");
    let o = nnquant(&[
        &"codegen",
        &model,
        &"--out",
        &gen,
        &"--weights-section",
        &".qspi_weights",
        &"--arena-section",
        &".ccmram",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let weights = std::fs::read_to_string(gen.join("src/weights.rs")).unwrap();
    let statics = weights.matches("pub static ").count();
    assert!(statics >= 3, "{weights}");
    assert_eq!(
        weights
            .matches("#[link_section = \".qspi_weights\"]")
            .count(),
        statics,
        "every weight static carries the section"
    );
    let demo_main = std::fs::read_to_string(gen.join("examples/demo/main.rs")).unwrap();
    assert!(
        demo_main.contains("#[link_section = \".ccmram\"]"),
        "{demo_main}"
    );
    let lib = std::fs::read_to_string(gen.join("src/lib.rs")).unwrap();
    assert!(lib.contains("pub const ARENA_SECTION: &str = \".ccmram\";"));
    // Default: no sections at all.
    let plain = f.path("plain");
    assert_eq!(nnquant(&[&"codegen", &model, &"--out", &plain]).code, 0);
    let weights = std::fs::read_to_string(plain.join("src/weights.rs")).unwrap();
    assert!(!weights.contains("link_section"));
    // A name that would break the code is refused before anything is written.
    let bad = f.path("bad");
    let o = nnquant(&[
        &"codegen",
        &model,
        &"--out",
        &bad,
        &"--weights-section",
        &".x\"] evil",
    ]);
    assert_fails(&o, &["--weights-section", "not a linker section name"]);
    assert!(!bad.exists());
    let o = nnquant(&[&"codegen", &model, &"--out", &bad, &"--crate-name", &"../x"]);
    assert_fails(&o, &["not a Cargo package name"]);
    assert!(!bad.exists());
}
