//! Runs the generated network once on a synthetic image (`pixel i = (i · 7 + 3) mod 256`, so
//! that a test can compute the same input) with the arena in a `static`, prints the output over
//! semihosting and exits.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::panic::PanicInfo;
use cortex_m_rt::entry;
use network::{argmax, Arena, Network, ARENA_LEN, INPUT_LEN, OUTPUT_LEN};
use semihosting::println;
// The board's memory.x comes with this crate's build script.
use stm32f407_memory as _;

#[entry]
fn main() -> ! {
    let Some(arena) = cortex_m::singleton!(: Arena = [0; ARENA_LEN]) else {
        semihosting::process::exit(1)
    };
    let mut net = Network::new(arena);
    let mut image = [0u8; INPUT_LEN];
    for (i, p) in image.iter_mut().enumerate() {
        *p = (i * 7 + 3) as u8;
    }
    let mut out = [0i8; OUTPUT_LEN];
    if net.run(&image, &mut out).is_err() {
        println!("error");
        semihosting::process::exit(1)
    }
    // Bytes as signed decimals, e.g. `out -3 17 0 ... class 1`.
    semihosting::print!("out");
    for v in out {
        semihosting::print!(" {}", v);
    }
    println!(" class {}", argmax(&out));
    semihosting::process::exit(0)
}

/// A board project has its own panic handler; the generated library brings none.
#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    semihosting::process::exit(101)
}
