// SPDX-License-Identifier: GPL-2.0-only
/*
 * vtsm: a "virtual link TSM" for the vdev emulator.
 *
 * The platform TSM is a Python model behind an emulated PCI function, the
 * TSM mailbox (vdev/tsm_mailbox/protocol.py documents its BAR0 ABI).  This
 * driver binds that function, registers a link TSM with the PCI/TSM core
 * (tsm_register(), parented to the mailbox: it has neither DEVCAP.TEE nor
 * IDE, so its own pci "tsm/" group never merges with the tsm class
 * directory) and relays, like AMD's sev-dev-tsm.c relays the PSP's SPDM
 * requests: the TSM asks for DOE exchanges, this driver carries them with
 * pci_tsm_doe_transfer() and posts the responses back until the TSM is done.
 *
 * Link ops: probe/remove wrap struct pci_tsm_pf0 for PF0 devices (NULL for
 * others, as sev-dev-tsm.c does); connect/disconnect run CONNECT and
 * DISCONNECT; bind runs TDISP LOCK, unbind runs STOP; guest_req carries
 * START (state change scope) and REPORT/STATUS (info scope).
 *
 * LOCK (mailbox 1.1 and later) carries the TDI's memory BARs, so the TSM
 * checks the interface report against the addresses this kernel assigned.
 * START is the accept step: the TSM reads and checks the report itself when
 * nobody read it since LOCK, so LOCK then START is the whole flow; a report
 * that disagrees fails START (or an earlier REPORT) with -EACCES and the TDI
 * stays CONFIG_LOCKED.  A 1.0 mailbox gets LOCK without data (unchecked).
 *
 * sysfs on the mailbox device (each drives one operation, serialised):
 *   tdi_lock   (wo)  BDF: pci_tsm_bind() with a host cookie -> LOCK
 *   tdi_start  (wo)  BDF: pci_tsm_guest_req(STATE_CHANGE) -> START
 *   tdi_stop   (wo)  BDF: pci_tsm_unbind() -> STOP
 *   tdi_state  (ro)  "BDF STATE" of the last TDI: its TDISP state as the TSM
 *                    last read it (mailbox 1.2 TDI_STATE) after the last TDI
 *                    operation, refused or not; "unknown" or "none"
 *   tdi_report (ro, binary) the last TDI's interface report, fetched with
 *                    pci_tsm_guest_req(INFO) -> REPORT when read at offset 0
 *   tdi_status (ro)  the TSM's STATUS text (JSON) for the last TDI
 *   ide_stream (ro)  how the last connect set up IDE: "BDF pci_ide streamH.R.E",
 *                    "BDF direct" (Root Port without IDE) or "none"
 * These never run inside ops->connect: that holds pci_tsm_rwsem for write.
 *
 * Every mailbox step waits for the completion interrupt with a timeout and
 * polls STATUS as a fallback, so a TSM that dies mid-operation costs the
 * caller -ETIMEDOUT (or -EIO once the device reads all-ones), never a hang.
 *
 * IDE: when the Root Port above the endpoint has an IDE capability (the
 * patched QEMU of qemu/README.md), the stream is the kernel's own, set up
 * like sev-dev-tsm.c does: pci_ide_stream_alloc(), the Stream ID, register
 * (the streamH.R.E link), setup of endpoint and Root Port, then CONNECT,
 * during which the TSM programs the keys of both ends (IDE_KM for the
 * endpoint, the platform for the Root Port), then enable, endpoint first.
 * Disconnect runs DISCONNECT, then pci_ide_stream_release() (disable, Root
 * Port first, teardown, unregister).  Without an IDE-capable Root Port the
 * kernel ignores the endpoint's capability, and the driver programs the
 * endpoint's first Selective IDE stream directly (Stream ID before CONNECT,
 * enable after, reserved ID 255 again on disconnect).  Keys travel over
 * IDE_KM inside the relayed secured SPDM, like in sev-dev-tsm.c.
 *
 * Parameters: step_timeout_ms (default 10000), ide_stream_id (default 1),
 * ide_rp_first (default off: enable the Root Port's end first, the wrong
 * order, so that the checkers can be seen naming it).
 */
#include <linux/bitfield.h>
#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/pci-ide.h>
#include <linux/pci-tsm.h>
#include <linux/slab.h>
#include <linux/sockptr.h>
#include <linux/sysfs.h>
#include <linux/tsm.h>

/* BAR0 register map (vdev/tsm_mailbox/protocol.py) */
#define VTSM_REG_ID		0x000
#define VTSM_REG_VERSION	0x004
#define VTSM_REG_WINDOW_SIZE	0x008
#define VTSM_REG_OP		0x010
#define VTSM_REG_TARGET		0x014
#define VTSM_REG_IN_LEN		0x018
#define VTSM_REG_IN_RC		0x01c
#define VTSM_REG_DOORBELL	0x020
#define VTSM_REG_STATUS		0x024
#define VTSM_REG_OUT_TYPE	0x028
#define VTSM_REG_OUT_LEN	0x02c
#define VTSM_REG_RESULT		0x030
#define VTSM_REG_ERROR		0x034
#define VTSM_REG_REASON_LEN	0x038
#define VTSM_REG_IRQ_CTRL	0x03c
#define VTSM_REG_TDI_STATE	0x044
#define VTSM_REASON		0x100
#define VTSM_IN_WINDOW		0x100000
#define VTSM_OUT_WINDOW		0x200000

#define VTSM_ID_MAGIC		0x4d535456	/* "VTSM" */
#define VTSM_VERSION(maj, min)	((maj) << 16 | (min))
#define VTSM_VERSION_LOCK_BARS	VTSM_VERSION(1, 1)	/* LOCK takes BAR records */
#define VTSM_VERSION_TDI_STATE	VTSM_VERSION(1, 2)	/* the TDI_STATE register */
#define VTSM_DOORBELL_RING	1
#define VTSM_IRQ_COMPLETION	BIT(0)
#define VTSM_REASON_MAX		256
#define VTSM_WINDOW_MAX		SZ_1M

enum vtsm_op {
	VTSM_OP_CONNECT = 0x01,
	VTSM_OP_DISCONNECT = 0x02,
	VTSM_OP_LOCK = 0x03,
	VTSM_OP_START = 0x04,
	VTSM_OP_STOP = 0x05,
	VTSM_OP_REPORT = 0x06,
	VTSM_OP_STATUS = 0x07,
	VTSM_OP_DOE_RESPONSE = 0x10,
	VTSM_OP_ABORT = 0x1f,
};

/* LOCK data (1.1): one record per memory BAR of the TDI, IN_LEN = n * 24. */
struct vtsm_lock_bar {
	u8 index;		/* BAR number = TDISP MMIO Range ID */
	u8 reserved[7];
	__le64 base;		/* bus address, what the BAR register holds */
	__le64 size;
} __packed;
static_assert(sizeof(struct vtsm_lock_bar) == 24);

enum vtsm_status {
	VTSM_IDLE = 0,
	VTSM_BUSY = 1,
	VTSM_DOE_REQUEST = 2,
	VTSM_DONE = 3,
	VTSM_ERROR = 4,
};

/*
 * A TDI's TDISP state: TDI_STATE of DEVICE_INTERFACE_STATE (PCIe r6.2 11.3.13),
 * which the mailbox's TDI_STATE register (1.2) reports with DONE of every TDI
 * operation, refused or not; UNKNOWN when the TSM does not know it.
 */
enum vtsm_tdi_state {
	VTSM_TDI_CONFIG_UNLOCKED = 0,
	VTSM_TDI_CONFIG_LOCKED = 1,
	VTSM_TDI_RUN = 2,
	VTSM_TDI_ERROR = 3,
	VTSM_TDI_UNKNOWN = 0xff,
	VTSM_TDI_NOT_ASKED = 0x100,	/* driver only: no TDI operation reached the TSM */
};

static unsigned int ide_stream_id = 1;
module_param(ide_stream_id, uint, 0444);
MODULE_PARM_DESC(ide_stream_id, "IDE Stream ID of the default selective stream (0-254)");

static bool ide_rp_first;
module_param(ide_rp_first, bool, 0644);
MODULE_PARM_DESC(ide_rp_first,
		 "enable the Root Port's IDE stream before the endpoint's (wrong order, for testing)");

static unsigned int step_timeout_ms = 10000;
module_param(step_timeout_ms, uint, 0644);
MODULE_PARM_DESC(step_timeout_ms, "longest wait for one mailbox step (ms)");

/* How often STATUS is polled when no completion interrupt arrives. */
#define VTSM_POLL_MS		20

/* pci_tsm_bind() refuses a NULL kvm; without KVM this opaque cookie stands in. */
static struct { int unused; } vtsm_host_cookie;
#define VTSM_HOST_KVM ((struct kvm *)&vtsm_host_cookie)

struct vtsm {
	struct pci_dev *pdev;		/* the mailbox function */
	void __iomem *bar;
	u32 version;			/* mailbox protocol, major << 16 | minor */
	size_t window;
	int irq;
	struct tsm_dev *tsm_dev;
	struct completion step_done;
	struct mutex mbox_lock;		/* one operation at a time; req/rsp */
	void *req;			/* DOE request the TSM asked for */
	void *rsp;			/* the device's DOE response */
	struct mutex sysfs_lock;	/* serialises tdi_* attributes */
	struct pci_dev *tdi;		/* last TDI (reference held) */
	int tdi_state;			/* its enum vtsm_tdi_state */
	int said_state;			/* TDI_STATE of the last TDI operation's DONE, */
	u32 said_target;		/* for this TARGET (both under mbox_lock) */
	void *report;
	size_t report_len;
	char ide_stream[64];		/* how the last connect set up IDE */
};

/* struct pci_tsm_pf0 wrapper for every DSM this TSM connects. */
struct vtsm_dsm {
	struct pci_tsm_pf0 pf0;
	struct pci_ide *ide;		/* the stream, when the kernel's pci_ide runs it */
};

static struct vtsm_dsm *vtsm_dsm_of(struct pci_dev *pdev)
{
	return container_of(pdev->tsm, struct vtsm_dsm, pf0.base_tsm);
}

struct vtsm_tdi {
	struct pci_tdi tdi;
};

/* The outcome of one operation, besides its status. */
struct vtsm_result {
	char reason[VTSM_REASON_MAX + 1];
	size_t data_len;
};

static const char *vtsm_op_name(u32 op)
{
	switch (op) {
	case VTSM_OP_CONNECT: return "connect";
	case VTSM_OP_DISCONNECT: return "disconnect";
	case VTSM_OP_LOCK: return "lock";
	case VTSM_OP_START: return "start";
	case VTSM_OP_STOP: return "stop";
	case VTSM_OP_REPORT: return "report";
	case VTSM_OP_STATUS: return "status";
	default: return "?";
	}
}

static const char *vtsm_tdi_state_name(int state)
{
	switch (state) {
	case VTSM_TDI_CONFIG_UNLOCKED: return "CONFIG_UNLOCKED";
	case VTSM_TDI_CONFIG_LOCKED: return "CONFIG_LOCKED";
	case VTSM_TDI_RUN: return "RUN";
	case VTSM_TDI_ERROR: return "ERROR";
	default: return "unknown";
	}
}

static bool vtsm_tdi_state_known(int state)
{
	return state >= VTSM_TDI_CONFIG_UNLOCKED && state <= VTSM_TDI_ERROR;
}

static bool vtsm_is_tdi_op(u32 op)
{
	return op >= VTSM_OP_LOCK && op <= VTSM_OP_STATUS;
}

static struct vtsm *vtsm_of_tsm_dev(struct tsm_dev *tsm_dev)
{
	return pci_get_drvdata(to_pci_dev(tsm_dev->dev.parent));
}

static struct vtsm *vtsm_of(struct pci_dev *pdev)
{
	return vtsm_of_tsm_dev(pdev->tsm->tsm_dev);
}

static u32 vtsm_target(struct pci_dev *pdev)
{
	return (u32)pci_domain_nr(pdev->bus) << 16 |
	       PCI_DEVID(pdev->bus->number, pdev->devfn);
}

/* ---- mailbox steps ------------------------------------------------------ */

static irqreturn_t vtsm_irq(int irq, void *data)
{
	struct vtsm *vt = data;

	complete(&vt->step_done);
	return IRQ_HANDLED;
}

/* Wait until STATUS leaves BUSY: interrupt first, STATUS polling as fallback. */
static int vtsm_wait_step(struct vtsm *vt)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(step_timeout_ms);
	u32 status;

	for (;;) {
		status = readl(vt->bar + VTSM_REG_STATUS);
		if (status == ~0U)
			return -EIO;	/* the mailbox server is gone */
		if (status != VTSM_BUSY)
			return status;
		if (time_after(jiffies, deadline))
			return -ETIMEDOUT;
		wait_for_completion_timeout(&vt->step_done,
					    msecs_to_jiffies(VTSM_POLL_MS));
	}
}

static int vtsm_ring(struct vtsm *vt, u32 op)
{
	reinit_completion(&vt->step_done);
	writel(op, vt->bar + VTSM_REG_OP);
	writel(VTSM_DOORBELL_RING, vt->bar + VTSM_REG_DOORBELL);
	return vtsm_wait_step(vt);
}

/* Leave the mailbox idle after a failed step, so the next operation can start. */
static void vtsm_abort(struct vtsm *vt)
{
	writel(VTSM_OP_ABORT, vt->bar + VTSM_REG_OP);
	writel(VTSM_DOORBELL_RING, vt->bar + VTSM_REG_DOORBELL);
}

static void vtsm_read_reason(struct vtsm *vt, struct vtsm_result *res)
{
	u32 len = min_t(u32, readl(vt->bar + VTSM_REG_REASON_LEN),
			VTSM_REASON_MAX);
	u32 i;

	memcpy_fromio(res->reason, vt->bar + VTSM_REASON, len);
	res->reason[len] = '\0';
	for (i = 0; i < len; i++)	/* one printable dmesg line */
		if (res->reason[i] < ' ' || res->reason[i] == 0x7f)
			res->reason[i] = '?';
}

/* Fetch the DOE request, carry it to the DSM, post the response, ring. */
static int vtsm_carry_doe(struct vtsm *vt, struct pci_dev *dsm)
{
	u32 type = readl(vt->bar + VTSM_REG_OUT_TYPE);
	u32 len = readl(vt->bar + VTSM_REG_OUT_LEN);
	int rc;

	if (len > vt->window || type > 0xff)
		return -EPROTO;
	memcpy_fromio(vt->req, vt->bar + VTSM_OUT_WINDOW, len);
	if (dsm)
		rc = pci_tsm_doe_transfer(dsm, type, vt->req, len, vt->rsp,
					  vt->window);
	else
		rc = -ENXIO;
	if (rc > 0)
		memcpy_toio(vt->bar + VTSM_IN_WINDOW, vt->rsp, rc);
	writel(rc > 0 ? rc : 0, vt->bar + VTSM_REG_IN_LEN);
	writel(rc < 0 ? rc : 0, vt->bar + VTSM_REG_IN_RC);
	return vtsm_ring(vt, VTSM_OP_DOE_RESPONSE);
}

/* What the TSM says of the TDI after a TDI operation (caller holds mbox_lock). */
static void vtsm_read_tdi_state(struct vtsm *vt, u32 op, struct pci_dev *target)
{
	u32 state = VTSM_TDI_UNKNOWN;

	if (!vtsm_is_tdi_op(op))
		return;
	if (vt->version >= VTSM_VERSION_TDI_STATE)
		state = readl(vt->bar + VTSM_REG_TDI_STATE);
	vt->said_state = vtsm_tdi_state_known(state) ? state : VTSM_TDI_UNKNOWN;
	vt->said_target = vtsm_target(target);
}

static int vtsm_collect_done(struct vtsm *vt, struct vtsm_result *res,
			     void *data, size_t size)
{
	s32 status = readl(vt->bar + VTSM_REG_RESULT);
	u32 len = readl(vt->bar + VTSM_REG_OUT_LEN);

	vtsm_read_reason(vt, res);
	res->data_len = 0;
	if (status > 0 || status < -MAX_ERRNO)
		status = -EIO;
	if (data && len) {
		if (len > size)
			return -EOVERFLOW;
		memcpy_fromio(data, vt->bar + VTSM_OUT_WINDOW, len);
		res->data_len = len;
	}
	return status;
}

/*
 * LOCK data: the memory BARs of @pdev that have an address and a length, as
 * the device's BAR registers hold them.  The TSM expects the report's MMIO
 * ranges to tile exactly these (PCIe r6.2 11.3.11).  Caller holds mbox_lock.
 */
static void vtsm_post_lock_bars(struct vtsm *vt, struct pci_dev *pdev)
{
	struct vtsm_lock_bar rec = {};
	unsigned long flags;
	u32 len = 0;
	int bar;

	if (vt->version < VTSM_VERSION_LOCK_BARS)
		return;		/* 1.0: LOCK takes no data */
	for (bar = 0; bar < PCI_STD_NUM_BARS; bar++) {
		flags = pci_resource_flags(pdev, bar);
		if (!(flags & IORESOURCE_MEM) || (flags & IORESOURCE_UNSET) ||
		    !pci_resource_len(pdev, bar))
			continue;
		rec.index = bar;
		rec.base = cpu_to_le64(pci_bus_address(pdev, bar));
		rec.size = cpu_to_le64(pci_resource_len(pdev, bar));
		memcpy_toio(vt->bar + VTSM_IN_WINDOW + len, &rec, sizeof(rec));
		len += sizeof(rec);
	}
	pci_dbg(pdev, "vtsm: LOCK with %zu memory BAR(s)\n", len / sizeof(rec));
	writel(len, vt->bar + VTSM_REG_IN_LEN);
}

/*
 * One TSM operation: post @op for @target, relay DOE requests to @dsm until
 * DONE.  DONE data (if any) lands in @data.  Returns the TSM's status or the
 * relay's own -errno; res->reason says why.
 */
static int vtsm_run(struct vtsm *vt, u32 op, struct pci_dev *target,
		    struct pci_dev *dsm, struct vtsm_result *res,
		    void *data, size_t size)
{
	int status;

	res->reason[0] = '\0';
	guard(mutex)(&vt->mbox_lock);
	writel(vtsm_target(target), vt->bar + VTSM_REG_TARGET);
	if (op == VTSM_OP_LOCK)
		vtsm_post_lock_bars(vt, target);
	status = vtsm_ring(vt, op);
	while (status == VTSM_DOE_REQUEST)
		status = vtsm_carry_doe(vt, dsm);

	switch (status) {
	case VTSM_DONE:
		vtsm_read_tdi_state(vt, op, target);
		return vtsm_collect_done(vt, res, data, size);
	case VTSM_ERROR:
		vtsm_read_reason(vt, res);
		vtsm_abort(vt);
		return -EPROTO;
	case -ETIMEDOUT:
		strscpy(res->reason, "TSM mailbox step timed out");
		vtsm_abort(vt);
		return status;
	case -EIO:
		strscpy(res->reason, "TSM mailbox not responding (reads all-ones)");
		return status;
	default:
		snprintf(res->reason, sizeof(res->reason),
			 "unexpected mailbox status %d", status);
		vtsm_abort(vt);
		return status < 0 ? status : -EPROTO;
	}
}

/* vtsm_run() plus exactly one dmesg line saying how it went. */
static int vtsm_op(struct vtsm *vt, u32 op, struct pci_dev *target,
		   struct pci_dev *dsm, void *data, size_t size, size_t *len)
{
	struct vtsm_result *res __free(kfree) = kzalloc(sizeof(*res), GFP_KERNEL);
	int rc;

	if (!res)
		return -ENOMEM;
	rc = vtsm_run(vt, op, target, dsm, res, data, size);
	if (rc)
		pci_err(target, "vtsm: %s via %s failed: %d (%s)\n",
			vtsm_op_name(op), dev_name(&vt->tsm_dev->dev), rc,
			res->reason[0] ? res->reason : "no reason given");
	else if (res->reason[0])
		pci_info(target, "vtsm: %s via %s ok (%s)\n", vtsm_op_name(op),
			 dev_name(&vt->tsm_dev->dev), res->reason);
	else
		pci_info(target, "vtsm: %s via %s ok\n", vtsm_op_name(op),
			 dev_name(&vt->tsm_dev->dev));
	if (len)
		*len = rc ? 0 : res->data_len;
	return rc;
}

/* ---- PCI/TSM link ops ----------------------------------------------------- */

static struct pci_tsm *vtsm_link_probe(struct tsm_dev *tsm_dev,
				       struct pci_dev *pdev)
{
	struct vtsm_dsm *dsm;
	int rc;

	if (!is_pci_tsm_pf0(pdev))
		return NULL;

	dsm = kzalloc(sizeof(*dsm), GFP_KERNEL);
	if (!dsm)
		return NULL;
	rc = pci_tsm_pf0_constructor(pdev, &dsm->pf0, tsm_dev);
	if (rc) {
		kfree(dsm);
		return NULL;
	}
	return &dsm->pf0.base_tsm;
}

static void vtsm_link_remove(struct pci_tsm *tsm)
{
	struct vtsm_dsm *dsm = container_of(tsm, struct vtsm_dsm, pf0.base_tsm);

	if (dsm->ide)
		pci_ide_stream_release(dsm->ide);
	pci_tsm_pf0_destructor(&dsm->pf0);
	kfree(dsm);
}

static void vtsm_note_ide(struct pci_dev *pdev, const char *fmt, ...)
{
	struct vtsm *vt = vtsm_of(pdev);
	va_list args;

	guard(mutex)(&vt->sysfs_lock);
	va_start(args, fmt);
	vsnprintf(vt->ide_stream, sizeof(vt->ide_stream), fmt, args);
	va_end(args);
}

/*
 * The kernel's own stream: both partners set up with pci_ide before CONNECT,
 * so that the Stream ID is in place when the TSM programs the keys of both
 * ends (PCIe r6.2 6.33.3).  The endpoint's stream is its default stream, as
 * in sev-dev-tsm.c.
 */
static int vtsm_pci_ide_setup(struct pci_dev *pdev, struct vtsm_dsm *dsm)
{
	struct pci_dev *rp = pcie_find_root_port(pdev);
	struct pci_ide *ide;
	int rc;

	if (ide_stream_id >= PCI_IDE_RESERVED_STREAM_ID) {
		pci_err(pdev, "vtsm: ide_stream_id %u is reserved\n", ide_stream_id);
		return -EINVAL;
	}
	ide = pci_ide_stream_alloc(pdev);
	if (!ide) {
		pci_err(pdev, "vtsm: no free IDE stream on %s or its host bridge\n",
			pci_name(rp));
		return -EBUSY;
	}
	ide->stream_id = ide_stream_id;
	ide->partner[PCI_IDE_EP].default_stream = 1;
	rc = pci_ide_stream_register(ide);
	if (rc) {
		pci_ide_stream_free(ide);
		return rc;
	}
	pci_ide_stream_setup(pdev, ide);
	pci_ide_stream_setup(rp, ide);
	dsm->ide = ide;
	pci_info(pdev, "vtsm: IDE %s (Stream ID %d) set up with pci_ide on %s and %s\n",
		 ide->name, ide->stream_id, pci_name(pdev), pci_name(rp));
	return 0;
}

/* Endpoint first (sev-dev-tsm.c's order); each must read Secure right away. */
static int vtsm_pci_ide_enable(struct pci_dev *pdev, struct pci_ide *ide)
{
	struct pci_dev *rp = pcie_find_root_port(pdev);
	struct pci_dev *first = ide_rp_first ? rp : pdev;
	struct pci_dev *second = ide_rp_first ? pdev : rp;
	struct pci_dev *failed = first;
	int rc;

	if (ide_rp_first)
		pci_warn(pdev, "vtsm: enabling IDE %s on the Root Port first (ide_rp_first)\n",
			 ide->name);
	rc = pci_ide_stream_enable(first, ide);
	if (!rc) {
		failed = second;
		rc = pci_ide_stream_enable(second, ide);
	}
	if (rc) {
		pci_err(pdev, "vtsm: IDE %s did not become Secure on %s: %d\n",
			ide->name, pci_name(failed), rc);
		return rc;
	}
	pci_info(pdev, "vtsm: IDE %s Secure on %s and %s\n", ide->name,
		 pci_name(pdev), pci_name(rp));
	return 0;
}

/*
 * The endpoint half of the default Selective IDE stream, written directly:
 * without a Root Port that has IDE the kernel ignores the endpoint's IDE
 * capability (pdev->ide_cap stays 0, docs/linux-pci-tsm.md §8), so
 * pci_ide_stream_setup() cannot be used.  Like sev-dev-tsm.c's
 * streams_setup(), the host programs the Stream ID before the TSM programs
 * keys over IDE_KM, and enables the stream afterwards.
 */
static int vtsm_ide_sel_ctl(struct pci_dev *pdev)
{
	int cap = pci_find_ext_capability(pdev, PCI_EXT_CAP_ID_IDE);
	u32 ide_cap, nr_link = 0;

	if (!cap)
		return 0;
	pci_read_config_dword(pdev, cap + PCI_IDE_CAP, &ide_cap);
	if (!(ide_cap & PCI_IDE_CAP_SELECTIVE))
		return 0;
	if (ide_cap & PCI_IDE_CAP_LINK)
		nr_link = 1 + FIELD_GET(PCI_IDE_CAP_LINK_TC_NUM, ide_cap);
	return cap + PCI_IDE_LINK_STREAM_0 + nr_link * PCI_IDE_LINK_BLOCK_SIZE +
	       PCI_IDE_SEL_CTL;
}

static void vtsm_ide_setup(struct pci_dev *pdev)
{
	int ctl = vtsm_ide_sel_ctl(pdev);
	struct pci_dev *rp = pcie_find_root_port(pdev);
	int block = ctl - PCI_IDE_SEL_CTL;
	u16 rid = rp ? pci_dev_id(rp) : 0;

	if (ide_stream_id >= PCI_IDE_SEL_CTL_ID_MAX) {
		pci_warn(pdev, "vtsm: ide_stream_id %u is reserved, IDE left alone\n",
			 ide_stream_id);
		return;
	}
	if (!ctl)
		return;
	/* The partner is the Root Port: its RID, V set (PCIe r6.2 7.9.26.5.4) */
	pci_write_config_dword(pdev, block + PCI_IDE_SEL_RID_1,
			       FIELD_PREP(PCI_IDE_SEL_RID_1_LIMIT, rid));
	pci_write_config_dword(pdev, block + PCI_IDE_SEL_RID_2,
			       FIELD_PREP(PCI_IDE_SEL_RID_2_VALID, 1) |
			       FIELD_PREP(PCI_IDE_SEL_RID_2_BASE, rid));
	pci_write_config_dword(pdev, ctl,
			       FIELD_PREP(PCI_IDE_SEL_CTL_ID, ide_stream_id) |
			       PCI_IDE_SEL_CTL_DEFAULT);
}

/* Fail_Insecure (1000b), which pci_regs.h does not name (PCIe r6.2 7.9.26.5.3) */
#define VTSM_IDE_STATE_FAIL_INSECURE	8

static const char *vtsm_ide_state_name(u32 state)
{
	switch (state) {
	case PCI_IDE_SEL_STS_STATE_INSECURE: return "Insecure";
	case PCI_IDE_SEL_STS_STATE_SECURE: return "Secure";
	case VTSM_IDE_STATE_FAIL_INSECURE: return "Fail_Insecure";
	default: return "reserved";
	}
}

static void vtsm_ide_enable(struct pci_dev *pdev)
{
	int ctl = vtsm_ide_sel_ctl(pdev);
	u32 val, sts, state;

	if (!ctl)
		return;
	pci_read_config_dword(pdev, ctl, &val);
	pci_write_config_dword(pdev, ctl, val | PCI_IDE_SEL_CTL_EN);
	pci_read_config_dword(pdev, ctl - PCI_IDE_SEL_CTL + PCI_IDE_SEL_STS, &sts);
	state = FIELD_GET(PCI_IDE_SEL_STS_STATE, sts);
	pci_info(pdev, "vtsm: IDE stream %u enabled: %s (state %u)\n", ide_stream_id,
		 vtsm_ide_state_name(state), state);
}

/* Back to what pci_ide_init() leaves in an unused stream: reserved ID 255. */
static void vtsm_ide_teardown(struct pci_dev *pdev)
{
	int ctl = vtsm_ide_sel_ctl(pdev);
	int block = ctl - PCI_IDE_SEL_CTL;

	if (!ctl)
		return;
	pci_write_config_dword(pdev, ctl,
			       FIELD_PREP(PCI_IDE_SEL_CTL_ID, PCI_IDE_SEL_CTL_ID_MAX));
	pci_write_config_dword(pdev, block + PCI_IDE_SEL_RID_2, 0);
	pci_write_config_dword(pdev, block + PCI_IDE_SEL_RID_1, 0);
}

static bool vtsm_root_port_has_ide(struct pci_dev *pdev)
{
	struct pci_dev *rp = pcie_find_root_port(pdev);

	return pdev->ide_cap && rp && rp->ide_cap;
}

static int vtsm_connect_pci_ide(struct pci_dev *pdev, struct vtsm_dsm *dsm)
{
	struct vtsm *vt = vtsm_of(pdev);
	int rc;

	rc = vtsm_pci_ide_setup(pdev, dsm);
	if (rc)
		return rc;
	rc = vtsm_op(vt, VTSM_OP_CONNECT, pdev, pdev, NULL, 0, NULL);
	if (!rc) {
		rc = vtsm_pci_ide_enable(pdev, dsm->ide);
		if (rc)		/* the TSM ends the session and stops the keys */
			vtsm_op(vt, VTSM_OP_DISCONNECT, pdev, pdev, NULL, 0, NULL);
	}
	if (rc) {
		pci_ide_stream_release(dsm->ide);
		dsm->ide = NULL;
		return rc;
	}
	vtsm_note_ide(pdev, "%s pci_ide %s", pci_name(pdev), dsm->ide->name);
	return 0;
}

static int vtsm_link_connect(struct pci_dev *pdev)
{
	int rc;

	if (vtsm_root_port_has_ide(pdev))
		return vtsm_connect_pci_ide(pdev, vtsm_dsm_of(pdev));

	pci_info(pdev, "vtsm: no IDE on the Root Port, programming the endpoint's stream\n");
	vtsm_ide_setup(pdev);
	rc = vtsm_op(vtsm_of(pdev), VTSM_OP_CONNECT, pdev, pdev, NULL, 0, NULL);
	if (rc) {
		vtsm_ide_teardown(pdev);
		return rc;
	}
	vtsm_ide_enable(pdev);
	vtsm_note_ide(pdev, "%s direct", pci_name(pdev));
	return 0;
}

static void vtsm_link_disconnect(struct pci_dev *pdev)
{
	struct vtsm_dsm *dsm = vtsm_dsm_of(pdev);

	vtsm_op(vtsm_of(pdev), VTSM_OP_DISCONNECT, pdev, pdev, NULL, 0, NULL);
	if (dsm->ide) {
		/* disable (Root Port first), teardown, unregister, free */
		pci_ide_stream_release(dsm->ide);
		dsm->ide = NULL;
	} else {
		vtsm_ide_teardown(pdev);
	}
	vtsm_note_ide(pdev, "none");
}

static struct pci_tdi *vtsm_link_bind(struct pci_dev *pdev, struct kvm *kvm,
				      u32 tdi_id)
{
	struct vtsm_tdi *t;
	int rc;

	t = kzalloc(sizeof(*t), GFP_KERNEL);
	if (!t)
		return ERR_PTR(-ENOMEM);
	rc = vtsm_op(vtsm_of(pdev), VTSM_OP_LOCK, pdev, pdev->tsm->dsm_dev,
		     NULL, 0, NULL);
	if (rc) {
		kfree(t);
		return ERR_PTR(rc);
	}
	pci_tsm_tdi_constructor(pdev, &t->tdi, kvm, tdi_id);
	return &t->tdi;
}

static void vtsm_link_unbind(struct pci_tdi *tdi)
{
	struct vtsm_tdi *t = container_of(tdi, struct vtsm_tdi, tdi);
	struct pci_dev *pdev = tdi->pdev;

	/* STOP failing still ends the binding: the core has no way back. */
	vtsm_op(vtsm_of(pdev), VTSM_OP_STOP, pdev, pdev->tsm->dsm_dev, NULL, 0,
		NULL);
	kfree(t);
}

static bool vtsm_scope_allows(enum pci_tsm_req_scope scope, u32 op)
{
	if (scope == PCI_TSM_REQ_STATE_CHANGE)
		return op == VTSM_OP_START;
	if (scope == PCI_TSM_REQ_INFO)
		return op == VTSM_OP_REPORT || op == VTSM_OP_STATUS;
	return false;
}

/*
 * Request: one u32, the mailbox operation.  Response: the DONE data.
 * Only TDISP steps a TVM may ask for pass; everything else is refused here.
 */
static ssize_t vtsm_link_guest_req(struct pci_tdi *tdi,
				   enum pci_tsm_req_scope scope,
				   sockptr_t req_in, size_t in_len,
				   sockptr_t req_out, size_t out_len,
				   u64 *tsm_code)
{
	struct pci_dev *pdev = tdi->pdev;
	struct vtsm *vt = vtsm_of(pdev);
	size_t len;
	u32 op;
	int rc;

	if (in_len < sizeof(op) || copy_from_sockptr(&op, req_in, sizeof(op)))
		return -EINVAL;
	if (!vtsm_scope_allows(scope, op)) {
		pci_info(pdev, "vtsm: guest request %#x in scope %d not supported\n",
			 op, scope);
		return -EOPNOTSUPP;
	}

	void *buf __free(kvfree) = kvzalloc(vt->window, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	rc = vtsm_op(vt, op, pdev, pdev->tsm->dsm_dev, buf, vt->window, &len);
	*tsm_code = rc;
	if (rc)
		return rc;
	if (!out_len)
		return 0;	/* the caller wants the step, not its data */
	if (len > out_len)
		return -EOVERFLOW;
	if (copy_to_sockptr(req_out, buf, len))
		return -EFAULT;
	return len;
}

static struct pci_tsm_ops vtsm_ops = {
	.probe = vtsm_link_probe,
	.remove = vtsm_link_remove,
	.connect = vtsm_link_connect,
	.disconnect = vtsm_link_disconnect,
	.bind = vtsm_link_bind,
	.unbind = vtsm_link_unbind,
	.guest_req = vtsm_link_guest_req,
};

/* ---- sysfs: TDISP steps for the host administrator -------------------------- */

static struct pci_dev *vtsm_parse_bdf(const char *buf)
{
	unsigned int dom, bus, dev, fn;

	if (sscanf(buf, "%x:%x:%x.%x", &dom, &bus, &dev, &fn) != 4 ||
	    bus > 0xff || dev > 0x1f || fn > 7)
		return NULL;
	return pci_get_domain_bus_and_slot(dom, bus, PCI_DEVFN(dev, fn));
}

/* Before a TDI operation: nothing said yet (sysfs_lock held). */
static void vtsm_tdi_ask(struct vtsm *vt)
{
	guard(mutex)(&vt->mbox_lock);
	vt->said_state = VTSM_TDI_NOT_ASKED;
}

/*
 * After a TDI operation on @pdev (sysfs_lock held): remember the TDI and where it
 * is.  The TSM's word (TDI_STATE) wins; a TSM that does not say (mailbox 1.1, a
 * scripted TSM) leaves the state a successful step implies.  A refused request
 * changes no TDISP state (PCIe r6.2 11.3.17), so a failure alone never moves it,
 * least of all to ERROR.
 */
static void vtsm_note_tdi(struct vtsm *vt, struct pci_dev *pdev, u32 op, int rc)
{
	int said;

	scoped_guard(mutex, &vt->mbox_lock)
		said = vt->said_target == vtsm_target(pdev) ? vt->said_state :
		       VTSM_TDI_NOT_ASKED;
	if (vt->tdi != pdev) {
		pci_dev_put(vt->tdi);
		vt->tdi = pci_dev_get(pdev);
		vt->report_len = 0;
		vt->tdi_state = VTSM_TDI_UNKNOWN;
	}
	if (vtsm_tdi_state_known(said)) {
		vt->tdi_state = said;
		return;
	}
	if (said == VTSM_TDI_NOT_ASKED || rc)
		return;
	if (op == VTSM_OP_LOCK)
		vt->tdi_state = VTSM_TDI_CONFIG_LOCKED;
	else if (op == VTSM_OP_START)
		vt->tdi_state = VTSM_TDI_RUN;
	else if (op == VTSM_OP_STOP)
		vt->tdi_state = VTSM_TDI_CONFIG_UNLOCKED;
}

static ssize_t vtsm_tdi_step(struct device *dev, const char *buf, size_t count,
			     u32 op)
{
	struct vtsm *vt = dev_get_drvdata(dev);
	ssize_t rc;

	struct pci_dev *pdev __free(pci_dev_put) = vtsm_parse_bdf(buf);
	if (!pdev)
		return -ENODEV;

	guard(mutex)(&vt->sysfs_lock);
	vtsm_tdi_ask(vt);
	switch (op) {
	case VTSM_OP_LOCK:
		rc = pci_tsm_bind(pdev, VTSM_HOST_KVM, vtsm_target(pdev));
		break;
	case VTSM_OP_START: {
		u64 code = 0;

		rc = pci_tsm_guest_req(pdev, PCI_TSM_REQ_STATE_CHANGE,
				       KERNEL_SOCKPTR(&op), sizeof(op),
				       KERNEL_SOCKPTR(NULL), 0, &code);
		break;
	}
	default:
		pci_tsm_unbind(pdev);
		rc = 0;
		break;
	}
	vtsm_note_tdi(vt, pdev, op, rc);
	return rc < 0 ? rc : count;
}

static ssize_t tdi_lock_store(struct device *dev, struct device_attribute *attr,
			      const char *buf, size_t count)
{
	return vtsm_tdi_step(dev, buf, count, VTSM_OP_LOCK);
}
static DEVICE_ATTR_WO(tdi_lock);

static ssize_t tdi_start_store(struct device *dev,
			       struct device_attribute *attr, const char *buf,
			       size_t count)
{
	return vtsm_tdi_step(dev, buf, count, VTSM_OP_START);
}
static DEVICE_ATTR_WO(tdi_start);

static ssize_t tdi_stop_store(struct device *dev, struct device_attribute *attr,
			      const char *buf, size_t count)
{
	return vtsm_tdi_step(dev, buf, count, VTSM_OP_STOP);
}
static DEVICE_ATTR_WO(tdi_stop);

static ssize_t tdi_state_show(struct device *dev, struct device_attribute *attr,
			      char *buf)
{
	struct vtsm *vt = dev_get_drvdata(dev);

	guard(mutex)(&vt->sysfs_lock);
	if (!vt->tdi)
		return sysfs_emit(buf, "none\n");
	return sysfs_emit(buf, "%s %s\n", pci_name(vt->tdi),
			  vtsm_tdi_state_name(vt->tdi_state));
}
static DEVICE_ATTR_RO(tdi_state);

/* "BDF pci_ide streamH.R.E", "BDF direct" or "none": IDE of the last connect. */
static ssize_t ide_stream_show(struct device *dev, struct device_attribute *attr,
			       char *buf)
{
	struct vtsm *vt = dev_get_drvdata(dev);

	guard(mutex)(&vt->sysfs_lock);
	return sysfs_emit(buf, "%s\n", vt->ide_stream);
}
static DEVICE_ATTR_RO(ide_stream);

/* INFO guest request for the last TDI; the DONE data lands in @out. */
static ssize_t vtsm_tdi_info(struct vtsm *vt, u32 op, void *out, size_t size)
{
	u64 code = 0;
	ssize_t rc;

	if (!vt->tdi)
		return -ENXIO;
	vtsm_tdi_ask(vt);
	rc = pci_tsm_guest_req(vt->tdi, PCI_TSM_REQ_INFO, KERNEL_SOCKPTR(&op),
			       sizeof(op), KERNEL_SOCKPTR(out), size, &code);
	vtsm_note_tdi(vt, vt->tdi, op, rc < 0 ? rc : 0);
	return rc;
}

static ssize_t tdi_status_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	struct vtsm *vt = dev_get_drvdata(dev);
	ssize_t len;

	guard(mutex)(&vt->sysfs_lock);
	len = vtsm_tdi_info(vt, VTSM_OP_STATUS, buf, PAGE_SIZE - 1);
	if (len < 0)
		return len;
	buf[len++] = '\n';
	return len;
}
static DEVICE_ATTR_RO(tdi_status);

static ssize_t tdi_report_read(struct file *filp, struct kobject *kobj,
			       const struct bin_attribute *attr, char *buf,
			       loff_t off, size_t count)
{
	struct vtsm *vt = dev_get_drvdata(kobj_to_dev(kobj));
	ssize_t len;

	guard(mutex)(&vt->sysfs_lock);
	if (off == 0) {
		len = vtsm_tdi_info(vt, VTSM_OP_REPORT, vt->report, vt->window);
		if (len < 0)
			return len;
		vt->report_len = len;
	}
	if (off >= vt->report_len)
		return 0;
	count = min_t(size_t, count, vt->report_len - off);
	memcpy(buf, vt->report + off, count);
	return count;
}
static const BIN_ATTR_RO(tdi_report, 0);

static struct attribute *vtsm_attrs[] = {
	&dev_attr_tdi_lock.attr,
	&dev_attr_tdi_start.attr,
	&dev_attr_tdi_stop.attr,
	&dev_attr_tdi_state.attr,
	&dev_attr_tdi_status.attr,
	&dev_attr_ide_stream.attr,
	NULL,
};

static const struct bin_attribute *const vtsm_bin_attrs[] = {
	&bin_attr_tdi_report,
	NULL,
};

static const struct attribute_group vtsm_group = {
	.attrs = vtsm_attrs,
	.bin_attrs = vtsm_bin_attrs,
};

/* ---- PCI driver for the mailbox function ---------------------------------------- */

static int vtsm_map_mailbox(struct pci_dev *pdev, struct vtsm *vt)
{
	int rc;

	rc = pcim_enable_device(pdev);
	if (rc)
		return dev_err_probe(&pdev->dev, rc, "enable failed\n");
	pci_set_master(pdev);	/* MSI-X messages are memory writes */

	vt->bar = pcim_iomap_region(pdev, 0, "vtsm");
	if (IS_ERR(vt->bar))
		return dev_err_probe(&pdev->dev, PTR_ERR(vt->bar),
				     "cannot map BAR0\n");
	if (readl(vt->bar + VTSM_REG_ID) != VTSM_ID_MAGIC)
		return dev_err_probe(&pdev->dev, -ENODEV,
				     "not a vtsm mailbox (ID %#x)\n",
				     readl(vt->bar + VTSM_REG_ID));
	vt->version = readl(vt->bar + VTSM_REG_VERSION);
	if (vt->version >> 16 != 1)
		return dev_err_probe(&pdev->dev, -ENODEV,
				     "unsupported mailbox version %#x\n",
				     vt->version);
	vt->window = readl(vt->bar + VTSM_REG_WINDOW_SIZE);
	if (!vt->window || vt->window > VTSM_WINDOW_MAX)
		return dev_err_probe(&pdev->dev, -ENODEV,
				     "bad window size %zu\n", vt->window);
	return 0;
}

static void vtsm_free_buffers(struct vtsm *vt)
{
	kvfree(vt->report);
	kvfree(vt->rsp);
	kvfree(vt->req);
}

/* One window each: a DOE object is at most 1 MiB (PCIe r6.0 6.30.1). */
static int vtsm_alloc_buffers(struct vtsm *vt)
{
	vt->req = kvzalloc(vt->window, GFP_KERNEL);
	vt->rsp = kvzalloc(vt->window, GFP_KERNEL);
	vt->report = kvzalloc(vt->window, GFP_KERNEL);
	if (!vt->req || !vt->rsp || !vt->report) {
		vtsm_free_buffers(vt);
		return -ENOMEM;
	}
	return 0;
}

static int vtsm_setup_irq(struct pci_dev *pdev, struct vtsm *vt)
{
	int rc;

	rc = pci_alloc_irq_vectors(pdev, 1, 1, PCI_IRQ_MSIX);
	if (rc < 0)
		return dev_err_probe(&pdev->dev, rc, "no MSI-X vector\n");
	vt->irq = pci_irq_vector(pdev, 0);
	rc = request_irq(vt->irq, vtsm_irq, 0, "vtsm", vt);
	if (rc) {
		pci_free_irq_vectors(pdev);
		return dev_err_probe(&pdev->dev, rc, "request_irq failed\n");
	}
	writel(VTSM_IRQ_COMPLETION, vt->bar + VTSM_REG_IRQ_CTRL);
	return 0;
}

static void vtsm_teardown_irq(struct pci_dev *pdev, struct vtsm *vt)
{
	writel(0, vt->bar + VTSM_REG_IRQ_CTRL);
	free_irq(vt->irq, vt);
	pci_free_irq_vectors(pdev);
}

static int vtsm_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct vtsm *vt;
	int rc;

	vt = devm_kzalloc(&pdev->dev, sizeof(*vt), GFP_KERNEL);
	if (!vt)
		return -ENOMEM;
	vt->pdev = pdev;
	vt->tdi_state = VTSM_TDI_UNKNOWN;
	vt->said_state = VTSM_TDI_NOT_ASKED;
	strscpy(vt->ide_stream, "none");
	init_completion(&vt->step_done);
	mutex_init(&vt->mbox_lock);
	mutex_init(&vt->sysfs_lock);
	pci_set_drvdata(pdev, vt);

	rc = vtsm_map_mailbox(pdev, vt);
	if (rc)
		return rc;
	rc = vtsm_alloc_buffers(vt);
	if (rc)
		return rc;
	rc = vtsm_setup_irq(pdev, vt);
	if (rc)
		goto err_buffers;

	vt->tsm_dev = tsm_register(&pdev->dev, &vtsm_ops);
	if (IS_ERR(vt->tsm_dev)) {
		rc = PTR_ERR(vt->tsm_dev);
		goto err_irq;
	}
	rc = sysfs_create_group(&pdev->dev.kobj, &vtsm_group);
	if (rc)
		goto err_tsm;

	pci_info(pdev, "vtsm: %s registered, mailbox v%u.%u, window %zu bytes, irq %d\n",
		 dev_name(&vt->tsm_dev->dev), vt->version >> 16,
		 vt->version & 0xffff, vt->window, vt->irq);
	return 0;

err_tsm:
	tsm_unregister(vt->tsm_dev);
err_irq:
	vtsm_teardown_irq(pdev, vt);
err_buffers:
	vtsm_free_buffers(vt);
	return rc;
}

static void vtsm_remove(struct pci_dev *pdev)
{
	struct vtsm *vt = pci_get_drvdata(pdev);

	/* Drains running tdi_* handlers before the TSM goes away. */
	sysfs_remove_group(&pdev->dev.kobj, &vtsm_group);
	/* Unbinds and disconnects every device still using this TSM. */
	tsm_unregister(vt->tsm_dev);
	vtsm_teardown_irq(pdev, vt);
	vtsm_free_buffers(vt);
	pci_dev_put(vt->tdi);
}

/* The mailbox's placeholder IDs (vdev/tsm_mailbox/protocol.py). */
static const struct pci_device_id vtsm_ids[] = {
	{ PCI_DEVICE(0x1ded, 0x7e20) },
	{ }
};
MODULE_DEVICE_TABLE(pci, vtsm_ids);

static struct pci_driver vtsm_driver = {
	.name = "vtsm",
	.id_table = vtsm_ids,
	.probe = vtsm_probe,
	.remove = vtsm_remove,
};
module_pci_driver(vtsm_driver);

MODULE_DESCRIPTION("Link TSM relaying DOE for the vdev emulated TSM mailbox");
MODULE_LICENSE("GPL");
