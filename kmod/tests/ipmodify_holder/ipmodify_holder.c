// SPDX-License-Identifier: GPL-2.0
/*
 * ipmodify_holder.c - a test module: it takes inet_getname with an
 * IPMODIFY ftrace_ops and does nothing with it, so that toa.ko meets the
 * conflict a livepatch of inet_getname would give it and must refuse to
 * load with one line in dmesg (tests/test_kmod_vm.py).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/ftrace.h>
#include <linux/module.h>
#include <linux/string.h>

static char holder_func[] = "inet_getname";

static void notrace holder_cb(unsigned long ip, unsigned long parent_ip,
			      struct ftrace_ops *ops, struct ftrace_regs *fregs)
{
}

static struct ftrace_ops holder_ops = {
	.func	= holder_cb,
	.flags	= FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_IPMODIFY,
};

static int __init holder_init(void)
{
	int err;

	err = ftrace_set_filter(&holder_ops, holder_func,
				strlen(holder_func), 0);
	if (err)
		return err;
	err = register_ftrace_function(&holder_ops);
	if (err) {
		ftrace_free_filter(&holder_ops);
		return err;
	}
	pr_info("holding %s (IPMODIFY)\n", holder_func);
	return 0;
}

static void __exit holder_exit(void)
{
	unregister_ftrace_function(&holder_ops);
	ftrace_free_filter(&holder_ops);
}

module_init(holder_init);
module_exit(holder_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("test: hold inet_getname with an IPMODIFY ftrace_ops");
