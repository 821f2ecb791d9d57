/*
 * The lab's tiny guest "kernel" (built by scripts/build-guest.sh --tiny into vmlinux-tiny).
 *
 * A PVH ELF that QEMU (7.2) boots directly with -kernel: QEMU finds the Xen ELF note
 * XEN_ELFNOTE_PHYS32_ENTRY (type 18) and enters pvh_start in 32-bit protected mode, paging off,
 * interrupts off. It writes the ready marker to COM1 (I/O port 0x3f8), then halts forever with
 * interrupts disabled, so the QEMU process stays alive (an idle vCPU) until it is told to quit.
 * No stack, no memory beyond its own few bytes, no use of the initrd or the command line: it is
 * for scale tests of the harness (many VMs per node), not for testing a guest.
 */
/* Plain GNU as (no C preprocessor): constants are .equ. */
    .equ    COM1, 0x3f8
    .equ    COM1_LSR, COM1 + 5
    .equ    LSR_THRE, 0x20          /* transmit holding register empty */
    .equ    XEN_ELFNOTE_PHYS32_ENTRY, 18

    .section .note.Xen, "a", @note
    .balign 4
    .long   2f - 1f                 /* namesz */
    .long   4f - 3f                 /* descsz */
    .long   XEN_ELFNOTE_PHYS32_ENTRY
1:  .asciz  "Xen"
2:  .balign 4
3:  .quad   pvh_start               /* QEMU reads the entry as a native-size word */
4:  .balign 4

    .text
    .code32
    .globl  pvh_start
pvh_start:
    cli
    cld
    movl    $msg, %esi
next:
    lodsb
    testb   %al, %al
    jz      halt
    movb    %al, %bl
    movw    $COM1_LSR, %dx
wait_thre:
    inb     %dx, %al
    testb   $LSR_THRE, %al
    jz      wait_thre
    movb    %bl, %al
    movw    $COM1, %dx
    outb    %al, %dx
    jmp     next
halt:
    cli
    hlt
    jmp     halt

    .section .rodata
msg:
    .asciz  "\r\nHARNESS-TINY-READY\r\n"
