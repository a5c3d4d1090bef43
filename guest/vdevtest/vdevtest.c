// SPDX-License-Identifier: GPL-2.0-only
/*
 * vdevtest: a tiny guest-side test driver for the vdev emulated endpoint.
 *
 * No in-tree driver binds the emulator's placeholder IDs, so the guest tests
 * bind this one through sysfs new_id.  It enables the function, maps BAR0,
 * allocates one MSI-X vector and counts its interrupts, and gives the test
 * script three attributes on the PCI device:
 *
 *   irq_count  (ro)  interrupts received on MSI-X vector 0
 *   mmio_addr  (rw)  BAR0 offset used by mmio_data (dword aligned)
 *   mmio_data  (rw)  32-bit MMIO read / write at mmio_addr
 *   doe        (rw)  write "TYPE HEX": one pci_doe() exchange of protocol
 *                    0001:TYPE through the kernel's DOE driver; read back
 *                    "RC HEX" (RC is pci_doe()'s return value)
 *   doe_ns     (ro)  how long that pci_doe() call took, in ns
 *   cfg_bench  (rw)  write "OFFSET COUNT": COUNT pci_read_config_dword()s of
 *                    the DW at OFFSET, back to back; read back "COUNT NS"
 *                    (the benchmarks time one config access with it)
 */
#include <linux/atomic.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/kernel.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/pci-doe.h>
#include <linux/hex.h>

/* Bytes, so a response in hex still fits one sysfs page. */
#define VDEVTEST_DOE_MAX 1536

struct vdevtest {
	struct pci_dev *pdev;
	void __iomem *bar0;
	resource_size_t bar0_len;
	atomic_t irq_count;
	u32 mmio_addr;
	int irq;
	struct mutex doe_lock;	/* serialises doe_req/doe_rsp */
	u8 doe_req[VDEVTEST_DOE_MAX];
	u8 doe_rsp[VDEVTEST_DOE_MAX];
	int doe_rc;
	bool doe_done;
	u64 doe_ns;
	u32 cfg_count;
	u64 cfg_ns;
};

static irqreturn_t vdevtest_irq(int irq, void *data)
{
	struct vdevtest *vt = data;

	atomic_inc(&vt->irq_count);
	return IRQ_HANDLED;
}

static ssize_t irq_count_show(struct device *dev, struct device_attribute *attr,
			      char *buf)
{
	struct vdevtest *vt = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%d\n", atomic_read(&vt->irq_count));
}
static DEVICE_ATTR_RO(irq_count);

static ssize_t mmio_addr_show(struct device *dev, struct device_attribute *attr,
			      char *buf)
{
	struct vdevtest *vt = dev_get_drvdata(dev);

	return sysfs_emit(buf, "0x%x\n", vt->mmio_addr);
}

static ssize_t mmio_addr_store(struct device *dev, struct device_attribute *attr,
			       const char *buf, size_t count)
{
	struct vdevtest *vt = dev_get_drvdata(dev);
	u32 off;
	int rc;

	rc = kstrtou32(buf, 0, &off);
	if (rc)
		return rc;
	if (off & 3 || off + 4 > vt->bar0_len)
		return -EINVAL;
	vt->mmio_addr = off;
	return count;
}
static DEVICE_ATTR_RW(mmio_addr);

static ssize_t mmio_data_show(struct device *dev, struct device_attribute *attr,
			      char *buf)
{
	struct vdevtest *vt = dev_get_drvdata(dev);

	return sysfs_emit(buf, "0x%08x\n", readl(vt->bar0 + vt->mmio_addr));
}

static ssize_t mmio_data_store(struct device *dev, struct device_attribute *attr,
			       const char *buf, size_t count)
{
	struct vdevtest *vt = dev_get_drvdata(dev);
	u32 val;
	int rc;

	rc = kstrtou32(buf, 0, &val);
	if (rc)
		return rc;
	writel(val, vt->bar0 + vt->mmio_addr);
	return count;
}
static DEVICE_ATTR_RW(mmio_data);

static ssize_t doe_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct vdevtest *vt = dev_get_drvdata(dev);
	ssize_t len;
	int n;

	mutex_lock(&vt->doe_lock);
	if (!vt->doe_done) {
		mutex_unlock(&vt->doe_lock);
		return sysfs_emit(buf, "none\n");
	}
	len = sysfs_emit(buf, "%d ", vt->doe_rc);
	n = vt->doe_rc > 0 ? vt->doe_rc : 0;
	bin2hex(buf + len, vt->doe_rsp, n);
	len += 2 * n;
	buf[len++] = '\n';
	mutex_unlock(&vt->doe_lock);
	return len;
}

static ssize_t doe_store(struct device *dev, struct device_attribute *attr,
			 const char *buf, size_t count)
{
	struct vdevtest *vt = dev_get_drvdata(dev);
	struct pci_doe_mb *mb;
	const char *hex;
	size_t hexlen;
	unsigned int type;
	u64 t0;

	if (sscanf(buf, "%u ", &type) != 1 || type > 255)
		return -EINVAL;
	hex = strchr(buf, ' ');
	if (!hex)
		return -EINVAL;
	hex++;
	hexlen = strcspn(hex, "\n");
	if (!hexlen || hexlen % 2 || hexlen / 2 > VDEVTEST_DOE_MAX)
		return -EINVAL;

	mb = pci_find_doe_mailbox(vt->pdev, PCI_VENDOR_ID_PCI_SIG, type);
	if (!mb)
		return -ENODEV;

	mutex_lock(&vt->doe_lock);
	if (hex2bin(vt->doe_req, hex, hexlen / 2)) {
		mutex_unlock(&vt->doe_lock);
		return -EINVAL;
	}
	t0 = ktime_get_ns();
	vt->doe_rc = pci_doe(mb, PCI_VENDOR_ID_PCI_SIG, type, vt->doe_req,
			     hexlen / 2, vt->doe_rsp, sizeof(vt->doe_rsp));
	vt->doe_ns = ktime_get_ns() - t0;
	vt->doe_done = true;
	mutex_unlock(&vt->doe_lock);
	return count;
}
static DEVICE_ATTR_RW(doe);

static ssize_t doe_ns_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct vdevtest *vt = dev_get_drvdata(dev);
	u64 ns;

	mutex_lock(&vt->doe_lock);
	ns = vt->doe_ns;
	mutex_unlock(&vt->doe_lock);
	return sysfs_emit(buf, "%llu\n", ns);
}
static DEVICE_ATTR_RO(doe_ns);

static ssize_t cfg_bench_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct vdevtest *vt = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%u %llu\n", vt->cfg_count, vt->cfg_ns);
}

static ssize_t cfg_bench_store(struct device *dev, struct device_attribute *attr,
			       const char *buf, size_t count)
{
	struct vdevtest *vt = dev_get_drvdata(dev);
	unsigned int off, n, i;
	u64 t0;
	u32 val;

	if (sscanf(buf, "%i %u", &off, &n) != 2 || off & 3 || off > 4092 || !n || n > 1000000)
		return -EINVAL;
	t0 = ktime_get_ns();
	for (i = 0; i < n; i++)
		pci_read_config_dword(vt->pdev, off, &val);
	vt->cfg_ns = ktime_get_ns() - t0;
	vt->cfg_count = n;
	return count;
}
static DEVICE_ATTR_RW(cfg_bench);

static struct attribute *vdevtest_attrs[] = {
	&dev_attr_cfg_bench.attr,
	&dev_attr_doe.attr,
	&dev_attr_doe_ns.attr,
	&dev_attr_irq_count.attr,
	&dev_attr_mmio_addr.attr,
	&dev_attr_mmio_data.attr,
	NULL,
};

static const struct attribute_group vdevtest_group = {
	.attrs = vdevtest_attrs,
};

static int vdevtest_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct vdevtest *vt;
	int rc;

	vt = devm_kzalloc(&pdev->dev, sizeof(*vt), GFP_KERNEL);
	if (!vt)
		return -ENOMEM;
	vt->pdev = pdev;
	atomic_set(&vt->irq_count, 0);
	mutex_init(&vt->doe_lock);

	rc = pcim_enable_device(pdev);
	if (rc)
		return dev_err_probe(&pdev->dev, rc, "enable failed\n");

	/* MSI-X messages are memory writes: they need Bus Master Enable. */
	pci_set_master(pdev);

	vt->bar0 = pcim_iomap_region(pdev, 0, "vdevtest");
	if (IS_ERR(vt->bar0))
		return dev_err_probe(&pdev->dev, PTR_ERR(vt->bar0),
				     "cannot map BAR0\n");
	vt->bar0_len = pci_resource_len(pdev, 0);

	rc = pci_alloc_irq_vectors(pdev, 1, 1, PCI_IRQ_MSIX);
	if (rc < 0)
		return dev_err_probe(&pdev->dev, rc, "no MSI-X vector\n");

	vt->irq = pci_irq_vector(pdev, 0);
	rc = request_irq(vt->irq, vdevtest_irq, 0, "vdevtest", vt);
	if (rc) {
		pci_free_irq_vectors(pdev);
		return dev_err_probe(&pdev->dev, rc, "request_irq failed\n");
	}

	pci_set_drvdata(pdev, vt);
	rc = sysfs_create_group(&pdev->dev.kobj, &vdevtest_group);
	if (rc) {
		free_irq(vt->irq, vt);
		pci_free_irq_vectors(pdev);
		return rc;
	}
	dev_info(&pdev->dev, "vdevtest bound, BAR0 %pR, MSI-X irq %d\n",
		 &pdev->resource[0], vt->irq);
	return 0;
}

static void vdevtest_remove(struct pci_dev *pdev)
{
	struct vdevtest *vt = pci_get_drvdata(pdev);

	sysfs_remove_group(&pdev->dev.kobj, &vdevtest_group);
	free_irq(vt->irq, vt);
	pci_free_irq_vectors(pdev);
}

/*
 * The default profile's placeholder IDs.  A profile with other IDs is bound
 * at run time through sysfs new_id, which only accepts driver_data values
 * found in this table, so the table must not be empty.
 */
static const struct pci_device_id vdevtest_ids[] = {
	{ PCI_DEVICE(0x1ded, 0x7e10) },
	{ }
};
MODULE_DEVICE_TABLE(pci, vdevtest_ids);

static struct pci_driver vdevtest_driver = {
	.name = "vdevtest",
	.id_table = vdevtest_ids,
	.probe = vdevtest_probe,
	.remove = vdevtest_remove,
};
module_pci_driver(vdevtest_driver);

MODULE_DESCRIPTION("Guest-side test driver for the vdev emulated PCIe endpoint");
MODULE_LICENSE("GPL");
