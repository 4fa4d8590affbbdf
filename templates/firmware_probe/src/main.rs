#![no_std]
#![no_main]
use cortex_m_rt::entry;
use semihosting::println;

#[inline(never)]
#[no_mangle]
pub extern "C" fn nnq_mark_start() { core::hint::black_box(0x5354_4152u32); }
#[inline(never)]
#[no_mangle]
pub extern "C" fn nnq_mark_end() { core::hint::black_box(0x454e_4400u32); }

#[entry]
fn main() -> ! {
    nnq_mark_start();
    let mut acc: i32 = 0;
    for i in 0..1000i32 { acc = acc.wrapping_add(core::hint::black_box(i)); }
    nnq_mark_end();
    println!("acc {}", acc);
    semihosting::process::exit(if acc == 499500 { 0 } else { 1 });
}
