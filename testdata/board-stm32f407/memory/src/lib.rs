//! Only the build script matters: it puts the STM32F407's memory.x on the linker path.
#![no_std]
