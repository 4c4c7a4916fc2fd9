// vnpu.ko conformance tests. They run inside the VM as root against /dev/accel/accel0 (`./vnpu vm --
// /opt/vnpu/bin/driver_test`) and skip when no vnpu accel device is present, so running them on the host is
// harmless. Every ioctl's happy path and each validation path (with otherwise valid input) has its own test.

#include <fcntl.h>
#include <liburing.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <xf86drm.h>

#include <vnpu_accel.h>
#include <vnpu_hw.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

constexpr const char *kDevicePath = "/dev/accel/accel0";
constexpr uint64_t kPage = 4096;

/// Runs an ioctl; returns 0 or the negative errno (EINTR/EAGAIN are retried by drmIoctl).
int do_ioctl(int fd, unsigned long request, void *arg)
{
	return drmIoctl(fd, request, arg) == 0 ? 0 : -errno;
}

int64_t monotonic_ns()
{
	timespec ts{};
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

/// An absolute CLOCK_MONOTONIC deadline `ms` milliseconds from now.
int64_t deadline_ms(int64_t ms)
{
	return monotonic_ns() + ms * 1000000;
}

constexpr int64_t kLongWaitMs = 120000;

/// Owns an open accel fd.
class Fd {
public:
	explicit Fd(int fd = -1) : fd_(fd) {}
	Fd(const Fd &) = delete;
	Fd &operator=(const Fd &) = delete;
	~Fd() { reset(); }
	int get() const { return fd_; }
	void reset()
	{
		if (fd_ >= 0)
			close(fd_);
		fd_ = -1;
	}

private:
	int fd_;
};

bool device_present()
{
	return access(kDevicePath, F_OK) == 0;
}

int open_device()
{
	return open(kDevicePath, O_RDWR | O_CLOEXEC);
}

/// Thin typed wrappers over the uAPI; each returns 0 or -errno.
struct Api {
	int fd;

	int get_param(uint32_t param, uint64_t *value) const
	{
		drm_vnpu_get_param p{};
		p.param = param;
		int ret = do_ioctl(fd, DRM_IOCTL_VNPU_GET_PARAM, &p);
		if (!ret)
			*value = p.value;
		return ret;
	}
	uint64_t param(uint32_t param) const
	{
		uint64_t v = 0;
		EXPECT_EQ(get_param(param, &v), 0) << "param " << param;
		return v;
	}
	int bo_create(uint64_t size, uint32_t *handle, uint64_t *offset = nullptr) const
	{
		drm_vnpu_bo_create a{};
		a.size = size;
		int ret = do_ioctl(fd, DRM_IOCTL_VNPU_BO_CREATE, &a);
		if (!ret) {
			*handle = a.handle;
			if (offset)
				*offset = a.mmap_offset;
		}
		return ret;
	}
	int mem_alloc(uint64_t size, uint32_t *handle, uint64_t *dev_addr = nullptr) const
	{
		drm_vnpu_mem_alloc a{};
		a.size = size;
		int ret = do_ioctl(fd, DRM_IOCTL_VNPU_MEM_ALLOC, &a);
		if (!ret) {
			*handle = a.handle;
			if (dev_addr)
				*dev_addr = a.dev_addr;
		}
		return ret;
	}
	int gem_close(uint32_t handle) const
	{
		drm_gem_close c{};
		c.handle = handle;
		return do_ioctl(fd, DRM_IOCTL_GEM_CLOSE, &c);
	}
	int submit(const std::vector<drm_vnpu_cmd> &cmds, uint64_t *seqno, uint32_t queue = 0) const
	{
		drm_vnpu_submit s{};
		s.cmds = reinterpret_cast<uintptr_t>(cmds.data());
		s.cmd_count = uint32_t(cmds.size());
		s.queue = queue;
		int ret = do_ioctl(fd, DRM_IOCTL_VNPU_SUBMIT, &s);
		if (!ret && seqno)
			*seqno = s.seqno;
		return ret;
	}
	int wait(uint64_t seqno, int64_t timeout_ns, drm_vnpu_wait *out = nullptr, uint32_t queue = 0) const
	{
		drm_vnpu_wait w{};
		w.seqno = seqno;
		w.timeout_ns = timeout_ns;
		w.queue = queue;
		int ret = do_ioctl(fd, DRM_IOCTL_VNPU_WAIT, &w);
		if (out)
			*out = w;
		return ret;
	}
	/// Waits for a job and returns its job_status, or the WAIT error.
	int wait_status(uint64_t seqno) const
	{
		drm_vnpu_wait w{};
		int ret = wait(seqno, deadline_ms(kLongWaitMs), &w);
		return ret ? ret : w.job_status;
	}
};

drm_vnpu_cmd copy_cmd(uint32_t op, uint32_t bo, uint32_t mem, uint64_t bo_off, uint64_t mem_off, uint64_t size)
{
	drm_vnpu_cmd c{};
	c.op = op;
	c.copy.bo_handle = bo;
	c.copy.mem_handle = mem;
	c.copy.bo_offset = bo_off;
	c.copy.mem_offset = mem_off;
	c.copy.size = size;
	return c;
}

drm_vnpu_cmd matmul_cmd(uint32_t a, uint64_t a_off, uint32_t b, uint64_t b_off, uint32_t c, uint64_t c_off,
			uint32_t m, uint32_t n, uint32_t k)
{
	drm_vnpu_cmd cmd{};
	cmd.op = DRM_VNPU_OP_MATMUL;
	cmd.matmul.a_handle = a;
	cmd.matmul.b_handle = b;
	cmd.matmul.c_handle = c;
	cmd.matmul.dtype = 0;
	cmd.matmul.a_offset = a_off;
	cmd.matmul.b_offset = b_off;
	cmd.matmul.c_offset = c_off;
	cmd.matmul.m = m;
	cmd.matmul.n = n;
	cmd.matmul.k = k;
	return cmd;
}

/// A mapping of a BO, unmapped on destruction.
class Mapping {
public:
	Mapping(int fd, uint64_t offset, size_t size) : size_(size)
	{
		ptr_ = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(offset));
	}
	Mapping(const Mapping &) = delete;
	Mapping &operator=(const Mapping &) = delete;
	~Mapping()
	{
		if (ok())
			munmap(ptr_, size_);
	}
	bool ok() const { return ptr_ != MAP_FAILED; }
	template <typename T> T *as() const { return static_cast<T *>(ptr_); }

private:
	void *ptr_;
	size_t size_;
};

/// Every test gets an open device (or is skipped) and a BO and device memory object for valid commands.
class DeviceTest : public ::testing::Test {
protected:
	static constexpr uint64_t kBoSize = 4 * kPage;
	static constexpr uint64_t kMemSize = 16 * kPage;

	void SetUp() override
	{
		if (!device_present())
			GTEST_SKIP() << kDevicePath << " not present (run inside the VM: ./vnpu vm -- driver_test)";
		fd_ = open_device();
		ASSERT_GE(fd_, 0) << "open " << kDevicePath << ": " << strerror(errno);
		api_ = Api{fd_};
		ASSERT_EQ(api_.bo_create(kBoSize, &bo_, &bo_offset_), 0);
		ASSERT_EQ(api_.mem_alloc(kMemSize, &mem_), 0);
	}
	void TearDown() override
	{
		if (fd_ >= 0)
			close(fd_);
	}

	drm_vnpu_cmd valid_copy() const
	{
		return copy_cmd(DRM_VNPU_OP_COPY_TO_DEVICE, bo_, mem_, 0, 0, kBoSize);
	}
	drm_vnpu_cmd valid_matmul() const
	{
		// 16x16 by 16x16 f32 = 1 KiB per matrix, all inside mem_.
		return matmul_cmd(mem_, 0, mem_, 1024, mem_, 2048, 16, 16, 16);
	}
	/// Submits one raw drm_vnpu_submit and returns 0 or -errno.
	int submit_raw(drm_vnpu_submit *s) const { return do_ioctl(fd_, DRM_IOCTL_VNPU_SUBMIT, s); }
	/// Submits one command and returns 0 or -errno; a job that was accepted is waited for.
	int submit_one(const drm_vnpu_cmd &cmd) const
	{
		uint64_t seqno = 0;
		int ret = api_.submit({cmd}, &seqno);
		if (!ret) {
			EXPECT_EQ(api_.wait_status(seqno), 0);
		}
		return ret;
	}

	int fd_ = -1;
	Api api_{-1};
	uint32_t bo_ = 0;
	uint64_t bo_offset_ = 0;
	uint32_t mem_ = 0;
};

// ---- GET_PARAM -----------------------------------------------------------------------------------------------

class GetParam : public DeviceTest {};

TEST_F(GetParam, ReportsDeviceIdentity)
{
	EXPECT_EQ(api_.param(DRM_VNPU_PARAM_DEVICE_ID), (uint64_t(VNPU_PCI_VENDOR_ID) << 16) | VNPU_PCI_DEVICE_ID);
	EXPECT_EQ(api_.param(DRM_VNPU_PARAM_DEVICE_VERSION) >> 16, uint64_t(VNPU_VERSION_MAJOR));
	uint64_t caps = api_.param(DRM_VNPU_PARAM_CAPS);
	EXPECT_TRUE(caps & VNPU_CAP_DMA_SG);
	EXPECT_TRUE(caps & VNPU_CAP_OP_MATMUL);
	EXPECT_GE(api_.param(DRM_VNPU_PARAM_NUM_QUEUES), 1u);
	EXPECT_EQ(api_.param(DRM_VNPU_PARAM_URING_CMD), 1u);
	uint64_t max_cmds = api_.param(DRM_VNPU_PARAM_MAX_CMDS);
	EXPECT_GE(max_cmds, 3u);
	EXPECT_LE(max_cmds, uint64_t(DRM_VNPU_MAX_CMDS));
}

TEST_F(GetParam, ReportsMemoryAndTimingModel)
{
	uint64_t size = api_.param(DRM_VNPU_PARAM_DEVMEM_SIZE);
	uint64_t free_bytes = api_.param(DRM_VNPU_PARAM_DEVMEM_FREE);
	EXPECT_GT(size, 0u);
	EXPECT_LE(free_bytes + kMemSize, size); // the fixture holds kMemSize
	EXPECT_GT(api_.param(DRM_VNPU_PARAM_H2D_MBPS), 0u);
	EXPECT_GT(api_.param(DRM_VNPU_PARAM_D2H_MBPS), 0u);
	EXPECT_GT(api_.param(DRM_VNPU_PARAM_COMPUTE_GFLOPS), 0u);
}

TEST_F(GetParam, DeviceClockAdvances)
{
	uint64_t t0 = api_.param(DRM_VNPU_PARAM_DEVICE_CLOCK_NS);
	usleep(10000);
	uint64_t t1 = api_.param(DRM_VNPU_PARAM_DEVICE_CLOCK_NS);
	EXPECT_GT(t1, t0);
}

TEST_F(GetParam, RejectsUnknownParam)
{
	uint64_t v = 0;
	EXPECT_EQ(api_.get_param(DRM_VNPU_PARAM_DEVICE_CLOCK_NS + 1, &v), -EINVAL);
	EXPECT_EQ(api_.get_param(0xffffffffu, &v), -EINVAL);
}

TEST_F(GetParam, RejectsNonZeroPad)
{
	drm_vnpu_get_param p{};
	p.param = DRM_VNPU_PARAM_DEVICE_ID;
	p.pad = 1;
	EXPECT_EQ(do_ioctl(fd_, DRM_IOCTL_VNPU_GET_PARAM, &p), -EINVAL);
}

// ---- BO_CREATE -------------------------------------------------------------------------------------------------

class BoCreate : public DeviceTest {
protected:
	int create(const drm_vnpu_bo_create &in)
	{
		drm_vnpu_bo_create a = in;
		return do_ioctl(fd_, DRM_IOCTL_VNPU_BO_CREATE, &a);
	}
	drm_vnpu_bo_create valid() const
	{
		drm_vnpu_bo_create a{};
		a.size = kPage;
		return a;
	}
};

TEST_F(BoCreate, MapsReadWrite)
{
	uint32_t h = 0;
	uint64_t off = 0;
	ASSERT_EQ(api_.bo_create(3 * kPage + 1, &h, &off), 0); // rounds up to 4 pages
	{
		Mapping m(fd_, off, 4 * kPage);
		ASSERT_TRUE(m.ok()) << strerror(errno);
		for (size_t i = 0; i < 4 * kPage / 4; i++)
			m.as<uint32_t>()[i] = uint32_t(i * 2654435761u);
	}
	Mapping again(fd_, off, 4 * kPage);
	ASSERT_TRUE(again.ok());
	for (size_t i = 0; i < 4 * kPage / 4; i++)
		ASSERT_EQ(again.as<uint32_t>()[i], uint32_t(i * 2654435761u)) << "word " << i;
	EXPECT_EQ(api_.gem_close(h), 0);
}

TEST_F(BoCreate, DistinctBosHaveDistinctOffsets)
{
	uint32_t h1 = 0, h2 = 0;
	uint64_t o1 = 0, o2 = 0;
	ASSERT_EQ(api_.bo_create(kPage, &h1, &o1), 0);
	ASSERT_EQ(api_.bo_create(kPage, &h2, &o2), 0);
	EXPECT_NE(h1, h2);
	EXPECT_NE(o1, o2);
}

TEST_F(BoCreate, RejectsZeroSize)
{
	auto a = valid();
	a.size = 0;
	EXPECT_EQ(create(a), -EINVAL);
}

TEST_F(BoCreate, RejectsSizeAboveTwoGiB)
{
	auto a = valid();
	a.size = (2ull << 30) + 1;
	EXPECT_EQ(create(a), -EINVAL);
	a.size = UINT64_MAX;
	EXPECT_EQ(create(a), -EINVAL);
}

TEST_F(BoCreate, RejectsNonZeroFlags)
{
	auto a = valid();
	a.flags = 1;
	EXPECT_EQ(create(a), -EINVAL);
}

TEST_F(BoCreate, RejectsNonZeroPad)
{
	auto a = valid();
	a.pad = 1;
	EXPECT_EQ(create(a), -EINVAL);
}

TEST_F(BoCreate, RejectsNonZeroPad2)
{
	auto a = valid();
	a.pad2 = 1;
	EXPECT_EQ(create(a), -EINVAL);
}

TEST_F(BoCreate, DeviceMemoryIsNotMappable)
{
	// Device memory has no mmap offset; no offset other than a BO's maps anything.
	void *p = mmap(nullptr, kPage, PROT_READ, MAP_SHARED, fd_, 0);
	EXPECT_EQ(p, MAP_FAILED);
	if (p != MAP_FAILED)
		munmap(p, kPage);
}

// ---- MEM_ALLOC -------------------------------------------------------------------------------------------------

class MemAlloc : public DeviceTest {};

TEST_F(MemAlloc, AccountsFreeMemory)
{
	uint64_t before = api_.param(DRM_VNPU_PARAM_DEVMEM_FREE);
	uint32_t h = 0;
	uint64_t addr = 0;
	ASSERT_EQ(api_.mem_alloc(5000, &h, &addr), 0); // rounds up to 8 KiB
	EXPECT_EQ(addr % 4096, 0u);
	EXPECT_EQ(api_.param(DRM_VNPU_PARAM_DEVMEM_FREE), before - 8192);
	EXPECT_EQ(api_.gem_close(h), 0);
	EXPECT_EQ(api_.param(DRM_VNPU_PARAM_DEVMEM_FREE), before);
}

TEST_F(MemAlloc, RejectsZeroSize)
{
	uint32_t h = 0;
	EXPECT_EQ(api_.mem_alloc(0, &h), -EINVAL);
}

TEST_F(MemAlloc, RejectsNonZeroFlags)
{
	drm_vnpu_mem_alloc a{};
	a.size = kPage;
	a.flags = 1;
	EXPECT_EQ(do_ioctl(fd_, DRM_IOCTL_VNPU_MEM_ALLOC, &a), -EINVAL);
}

TEST_F(MemAlloc, LargerThanDeviceReturnsEnospc)
{
	uint32_t h = 0;
	EXPECT_EQ(api_.mem_alloc(api_.param(DRM_VNPU_PARAM_DEVMEM_SIZE) + 1, &h), -ENOSPC);
	EXPECT_EQ(api_.mem_alloc(UINT64_MAX, &h), -ENOSPC);
}

TEST_F(MemAlloc, ExhaustionReturnsEnospcAndRecovers)
{
	uint64_t before = api_.param(DRM_VNPU_PARAM_DEVMEM_FREE);
	const uint64_t chunk = 16ull << 20;
	std::vector<uint32_t> handles;
	int ret = 0;
	for (int i = 0; i < 4096 && ret == 0; i++) {
		uint32_t h = 0;
		ret = api_.mem_alloc(chunk, &h);
		if (!ret)
			handles.push_back(h);
	}
	EXPECT_EQ(ret, -ENOSPC);
	uint64_t left = api_.param(DRM_VNPU_PARAM_DEVMEM_FREE);
	EXPECT_LT(left, chunk);
	uint32_t h = 0;
	EXPECT_EQ(api_.mem_alloc(left + kPage, &h), -ENOSPC);
	for (uint32_t handle : handles)
		EXPECT_EQ(api_.gem_close(handle), 0);
	EXPECT_EQ(api_.param(DRM_VNPU_PARAM_DEVMEM_FREE), before);
	EXPECT_EQ(api_.mem_alloc(chunk, &h), 0);
}

// ---- SUBMIT validation -------------------------------------------------------------------------------------------

class Submit : public DeviceTest {
protected:
	/// A valid single-command submit of `cmd_` (which tests mutate).
	drm_vnpu_submit valid()
	{
		drm_vnpu_submit s{};
		s.cmds = reinterpret_cast<uintptr_t>(&cmd_);
		s.cmd_count = 1;
		return s;
	}
	int submit_cmd(const drm_vnpu_cmd &cmd)
	{
		cmd_ = cmd;
		auto s = valid();
		int ret = submit_raw(&s);
		if (!ret) {
			EXPECT_EQ(api_.wait_status(s.seqno), 0);
		}
		return ret;
	}
	drm_vnpu_cmd cmd_{};
};

TEST_F(Submit, AcceptsValidCopy)
{
	EXPECT_EQ(submit_cmd(valid_copy()), 0);
}

TEST_F(Submit, AcceptsValidMatmul)
{
	EXPECT_EQ(submit_cmd(valid_matmul()), 0);
}

TEST_F(Submit, RejectsNonZeroFlags)
{
	cmd_ = valid_copy();
	auto s = valid();
	s.flags = 1;
	EXPECT_EQ(submit_raw(&s), -EINVAL);
}

TEST_F(Submit, RejectsNonZeroPad)
{
	cmd_ = valid_copy();
	auto s = valid();
	s.pad = 1;
	EXPECT_EQ(submit_raw(&s), -EINVAL);
}

TEST_F(Submit, RejectsNonZeroSeqnoOnInput)
{
	cmd_ = valid_copy();
	auto s = valid();
	s.seqno = 1;
	EXPECT_EQ(submit_raw(&s), -EINVAL);
}

TEST_F(Submit, RejectsZeroCmdCount)
{
	cmd_ = valid_copy();
	auto s = valid();
	s.cmd_count = 0;
	EXPECT_EQ(submit_raw(&s), -EINVAL);
}

TEST_F(Submit, RejectsTooManyCmds)
{
	std::vector<drm_vnpu_cmd> cmds(DRM_VNPU_MAX_CMDS + 1, valid_copy());
	uint64_t seqno = 0;
	EXPECT_EQ(api_.submit(cmds, &seqno), -EINVAL);
}

TEST_F(Submit, AcceptsMaxCmds)
{
	std::vector<drm_vnpu_cmd> cmds(api_.param(DRM_VNPU_PARAM_MAX_CMDS), valid_copy());
	uint64_t seqno = 0;
	ASSERT_EQ(api_.submit(cmds, &seqno), 0);
	EXPECT_EQ(api_.wait_status(seqno), 0);
}

TEST_F(Submit, RejectsQueueOutOfRange)
{
	cmd_ = valid_copy();
	auto s = valid();
	s.queue = uint32_t(api_.param(DRM_VNPU_PARAM_NUM_QUEUES));
	EXPECT_EQ(submit_raw(&s), -EINVAL);
	s.queue = 0xffffffffu;
	EXPECT_EQ(submit_raw(&s), -EINVAL);
}

TEST_F(Submit, RejectsBadCmdsPointer)
{
	auto s = valid();
	s.cmds = 8; // unmapped
	EXPECT_EQ(submit_raw(&s), -EFAULT);
}

TEST_F(Submit, RejectsInvalidOp)
{
	auto c = valid_copy();
	c.op = DRM_VNPU_OP_INVALID;
	EXPECT_EQ(submit_cmd(c), -EINVAL);
}

TEST_F(Submit, RejectsUnknownOp)
{
	auto c = valid_copy();
	c.op = 99;
	EXPECT_EQ(submit_cmd(c), -EINVAL);
}

TEST_F(Submit, RejectsNonZeroCmdFlags)
{
	auto c = valid_copy();
	c.flags = 1;
	EXPECT_EQ(submit_cmd(c), -EINVAL);
}

TEST_F(Submit, RejectsCopyNonZeroReserved)
{
	for (int i = 0; i < 3; i++) {
		auto c = valid_copy();
		c.copy.reserved[i] = 1;
		EXPECT_EQ(submit_cmd(c), -EINVAL) << "reserved[" << i << "]";
	}
}

TEST_F(Submit, RejectsCopyZeroSize)
{
	auto c = valid_copy();
	c.copy.size = 0;
	EXPECT_EQ(submit_cmd(c), -EINVAL);
}

TEST_F(Submit, RejectsCopyUnknownBoHandle)
{
	auto c = valid_copy();
	c.copy.bo_handle = 0xdead;
	EXPECT_EQ(submit_cmd(c), -ENOENT);
}

TEST_F(Submit, RejectsCopyUnknownMemHandle)
{
	auto c = valid_copy();
	c.copy.mem_handle = 0xdead;
	EXPECT_EQ(submit_cmd(c), -ENOENT);
}

TEST_F(Submit, RejectsCopyDeviceMemoryAsBo)
{
	auto c = valid_copy();
	c.copy.bo_handle = mem_;
	EXPECT_EQ(submit_cmd(c), -EINVAL);
}

TEST_F(Submit, RejectsCopyBoAsDeviceMemory)
{
	auto c = valid_copy();
	c.copy.mem_handle = bo_;
	EXPECT_EQ(submit_cmd(c), -EINVAL);
}

TEST_F(Submit, RejectsCopyPastBoEnd)
{
	auto c = valid_copy();
	c.copy.bo_offset = 1; // kBoSize bytes from offset 1
	EXPECT_EQ(submit_cmd(c), -EINVAL);
}

TEST_F(Submit, RejectsCopyPastMemEnd)
{
	auto c = valid_copy();
	c.copy.mem_offset = kMemSize - kBoSize + 4;
	EXPECT_EQ(submit_cmd(c), -EINVAL);
}

TEST_F(Submit, RejectsCopyOffsetOverflow)
{
	// offset + size wraps to a small number; a naive check would accept it.
	auto c = valid_copy();
	c.copy.bo_offset = UINT64_MAX - 15;
	c.copy.size = 32;
	EXPECT_EQ(submit_cmd(c), -EINVAL);
	c = valid_copy();
	c.copy.mem_offset = UINT64_MAX - 15;
	c.copy.size = 32;
	EXPECT_EQ(submit_cmd(c), -EINVAL);
}

TEST_F(Submit, RejectsCopySizeLargerThanObjects)
{
	auto c = valid_copy();
	c.copy.size = UINT64_MAX;
	EXPECT_EQ(submit_cmd(c), -EINVAL);
}

TEST_F(Submit, AcceptsCopyEndingExactlyAtObjectEnd)
{
	auto c = valid_copy();
	c.copy.bo_offset = kBoSize - 4;
	c.copy.mem_offset = kMemSize - 4;
	c.copy.size = 4;
	EXPECT_EQ(submit_cmd(c), 0);
}

TEST_F(Submit, RejectsMatmulNonZeroPad)
{
	auto c = valid_matmul();
	c.matmul.pad = 1;
	EXPECT_EQ(submit_cmd(c), -EINVAL);
}

TEST_F(Submit, RejectsMatmulUnknownDtype)
{
	auto c = valid_matmul();
	c.matmul.dtype = 1;
	EXPECT_EQ(submit_cmd(c), -EINVAL);
}

TEST_F(Submit, RejectsMatmulZeroDimension)
{
	for (int d = 0; d < 3; d++) {
		auto c = valid_matmul();
		(d == 0 ? c.matmul.m : d == 1 ? c.matmul.n : c.matmul.k) = 0;
		EXPECT_EQ(submit_cmd(c), -EINVAL) << "dim " << d;
	}
}

TEST_F(Submit, RejectsMatmulDimensionAboveMax)
{
	for (int d = 0; d < 3; d++) {
		auto c = valid_matmul();
		(d == 0 ? c.matmul.m : d == 1 ? c.matmul.n : c.matmul.k) = VNPU_MATMUL_DIM_MAX + 1;
		EXPECT_EQ(submit_cmd(c), -EINVAL) << "dim " << d;
	}
}

TEST_F(Submit, RejectsMatmulUnalignedOffset)
{
	auto c = valid_matmul();
	c.matmul.a_offset = 2;
	EXPECT_EQ(submit_cmd(c), -EINVAL);
	c = valid_matmul();
	c.matmul.b_offset = 1026;
	EXPECT_EQ(submit_cmd(c), -EINVAL);
	c = valid_matmul();
	c.matmul.c_offset = 2049;
	EXPECT_EQ(submit_cmd(c), -EINVAL);
}

TEST_F(Submit, RejectsMatmulOperandOutsideObject)
{
	auto c = valid_matmul();
	c.matmul.m = 16384; // A = 16384 x 16 f32 = 1 MiB > kMemSize
	EXPECT_EQ(submit_cmd(c), -EINVAL);
	c = valid_matmul();
	c.matmul.c_offset = kMemSize - 1020; // C (1 KiB) crosses the end
	EXPECT_EQ(submit_cmd(c), -EINVAL);
	c = valid_matmul();
	c.matmul.b_offset = UINT64_MAX - 3; // wraps
	EXPECT_EQ(submit_cmd(c), -EINVAL);
}

TEST_F(Submit, RejectsMatmulBoOperand)
{
	auto c = valid_matmul();
	c.matmul.b_handle = bo_;
	EXPECT_EQ(submit_cmd(c), -EINVAL);
}

TEST_F(Submit, RejectsMatmulUnknownHandle)
{
	auto c = valid_matmul();
	c.matmul.c_handle = 0xdead;
	EXPECT_EQ(submit_cmd(c), -ENOENT);
}

TEST_F(Submit, RejectsJobWhoseLastCommandIsInvalid)
{
	// Nothing of a job runs unless all of it validates: the first copy must not reach the device.
	Mapping m(fd_, bo_offset_, kBoSize);
	ASSERT_TRUE(m.ok());
	uint32_t out_bo = 0;
	uint64_t out_off = 0;
	ASSERT_EQ(api_.bo_create(kBoSize, &out_bo, &out_off), 0);
	Mapping out(fd_, out_off, kBoSize);
	ASSERT_TRUE(out.ok());
	memset(m.as<void>(), 0x5a, kBoSize);
	memset(out.as<void>(), 0, kBoSize);
	ASSERT_EQ(submit_one(copy_cmd(DRM_VNPU_OP_COPY_TO_DEVICE, bo_, mem_, 0, 0, kBoSize)), 0);

	auto bad = valid_copy();
	bad.copy.size = 0;
	std::vector<drm_vnpu_cmd> cmds = {copy_cmd(DRM_VNPU_OP_COPY_FROM_DEVICE, out_bo, mem_, 0, 0, kBoSize), bad};
	uint64_t seqno = 0;
	EXPECT_EQ(api_.submit(cmds, &seqno), -EINVAL);
	usleep(100000);
	for (size_t i = 0; i < kBoSize; i++)
		ASSERT_EQ(out.as<uint8_t>()[i], 0) << "byte " << i << " was written by a rejected job";
}

// ---- jobs --------------------------------------------------------------------------------------------------------

/// Deterministic small-integer matrices: every product and partial sum is exact in f32, so any summation order
/// gives the bit-identical result the CPU reference computes.
std::vector<float> make_matrix(size_t rows, size_t cols, uint32_t seed)
{
	std::mt19937 rng(seed);
	std::uniform_int_distribution<int> dist(-8, 8);
	std::vector<float> v(rows * cols);
	for (float &x : v)
		x = float(dist(rng));
	return v;
}

std::vector<float> reference_matmul(const std::vector<float> &a, const std::vector<float> &b, size_t m, size_t n,
				    size_t k)
{
	std::vector<float> c(m * n, 0.0f);
	for (size_t i = 0; i < m; i++)
		for (size_t j = 0; j < n; j++) {
			float acc = 0.0f;
			for (size_t p = 0; p < k; p++)
				acc += a[i * k + p] * b[p * n + j];
			c[i * n + j] = acc;
		}
	return c;
}

/// Host input/output BOs and device memory for one C = A x B job.
struct MatmulJob {
	uint32_t m = 0, n = 0, k = 0;
	std::vector<float> a, b, expect;
	uint32_t in_bo = 0, out_bo = 0, dev = 0;
	uint64_t in_off = 0, out_off = 0;
	uint64_t a_bytes = 0, b_bytes = 0, c_bytes = 0;

	MatmulJob(const Api &api, uint32_t m_, uint32_t n_, uint32_t k_, uint32_t seed) : m(m_), n(n_), k(k_)
	{
		a = make_matrix(m, k, seed);
		b = make_matrix(k, n, seed + 1);
		expect = reference_matmul(a, b, m, n, k);
		a_bytes = a.size() * 4;
		b_bytes = b.size() * 4;
		c_bytes = expect.size() * 4;
		EXPECT_EQ(api.bo_create(a_bytes + b_bytes, &in_bo, &in_off), 0);
		EXPECT_EQ(api.bo_create(c_bytes, &out_bo, &out_off), 0);
		EXPECT_EQ(api.mem_alloc(a_bytes + b_bytes + c_bytes, &dev), 0);
		Mapping in(api.fd, in_off, a_bytes + b_bytes);
		EXPECT_TRUE(in.ok());
		if (in.ok()) {
			memcpy(in.as<uint8_t>(), a.data(), a_bytes);
			memcpy(in.as<uint8_t>() + a_bytes, b.data(), b_bytes);
		}
		Mapping out(api.fd, out_off, c_bytes);
		if (out.ok())
			memset(out.as<void>(), 0xff, c_bytes);
	}
	/// COPY_TO_DEVICE (A and B) -> MATMUL -> COPY_FROM_DEVICE (C), as one job.
	std::vector<drm_vnpu_cmd> cmds() const
	{
		return {
			copy_cmd(DRM_VNPU_OP_COPY_TO_DEVICE, in_bo, dev, 0, 0, a_bytes + b_bytes),
			matmul_cmd(dev, 0, dev, a_bytes, dev, a_bytes + b_bytes, m, n, k),
			copy_cmd(DRM_VNPU_OP_COPY_FROM_DEVICE, out_bo, dev, 0, a_bytes + b_bytes, c_bytes),
		};
	}
	/// Compares the output BO with the CPU reference bit for bit.
	void check(int fd) const
	{
		Mapping out(fd, out_off, c_bytes);
		ASSERT_TRUE(out.ok());
		EXPECT_EQ(memcmp(out.as<void>(), expect.data(), c_bytes), 0) << "C differs from the CPU reference";
	}
};

class Job : public DeviceTest {};

TEST_F(Job, CopyRoundTripsThroughDeviceMemory)
{
	Mapping in(fd_, bo_offset_, kBoSize);
	ASSERT_TRUE(in.ok());
	for (size_t i = 0; i < kBoSize; i++)
		in.as<uint8_t>()[i] = uint8_t(i * 7 + 3);
	uint32_t out_bo = 0;
	uint64_t out_off = 0;
	ASSERT_EQ(api_.bo_create(kBoSize, &out_bo, &out_off), 0);
	Mapping out(fd_, out_off, kBoSize);
	ASSERT_TRUE(out.ok());
	memset(out.as<void>(), 0, kBoSize);

	// Unaligned offsets and sizes on both sides.
	std::vector<drm_vnpu_cmd> cmds = {
		copy_cmd(DRM_VNPU_OP_COPY_TO_DEVICE, bo_, mem_, 5, 4099, kBoSize - 5),
		copy_cmd(DRM_VNPU_OP_COPY_FROM_DEVICE, out_bo, mem_, 1, 4099, kBoSize - 5),
	};
	uint64_t seqno = 0;
	ASSERT_EQ(api_.submit(cmds, &seqno), 0);
	drm_vnpu_wait w{};
	ASSERT_EQ(api_.wait(seqno, deadline_ms(kLongWaitMs), &w), 0);
	EXPECT_EQ(w.job_status, 0);
	EXPECT_EQ(w.hw_status, uint32_t(VNPU_CPL_OK));
	EXPECT_LE(w.t_start, w.t_end);
	EXPECT_EQ(out.as<uint8_t>()[0], 0);
	for (size_t i = 0; i < kBoSize - 5; i++)
		ASSERT_EQ(out.as<uint8_t>()[1 + i], in.as<uint8_t>()[5 + i]) << "byte " << i;
}

TEST_F(Job, MatmulPipelineMatchesCpuReference)
{
	MatmulJob job(api_, 33, 17, 65, 1);
	uint64_t seqno = 0;
	ASSERT_EQ(api_.submit(job.cmds(), &seqno), 0);
	EXPECT_GT(seqno, 0u);
	ASSERT_EQ(api_.wait_status(seqno), 0);
	job.check(fd_);
}

TEST_F(Job, SeqnosIncrease)
{
	uint64_t s1 = 0, s2 = 0;
	ASSERT_EQ(api_.submit({valid_copy()}, &s1), 0);
	ASSERT_EQ(api_.submit({valid_copy()}, &s2), 0);
	EXPECT_GT(s2, s1);
	EXPECT_EQ(api_.wait_status(s1), 0);
	EXPECT_EQ(api_.wait_status(s2), 0);
}

TEST_F(Job, ManyJobsInFlightBeyondRingSize)
{
	// The command ring holds 256 entries; 1000 three-command jobs must all be accepted and all complete.
	MatmulJob mj(api_, 8, 8, 8, 7);
	std::vector<uint64_t> seqnos;
	for (int i = 0; i < 1000; i++) {
		uint64_t s = 0;
		ASSERT_EQ(api_.submit(mj.cmds(), &s), 0) << "job " << i;
		seqnos.push_back(s);
	}
	for (uint64_t s : seqnos)
		ASSERT_EQ(api_.wait_status(s), 0) << "seqno " << s;
	mj.check(fd_);
}

TEST_F(Job, HandlesClosedWhileJobInFlightStayValid)
{
	uint64_t before = api_.param(DRM_VNPU_PARAM_DEVMEM_FREE);
	MatmulJob mj(api_, 64, 64, 64, 3);
	Mapping out(fd_, mj.out_off, mj.c_bytes); // keeps the output pages visible after the handle goes
	ASSERT_TRUE(out.ok());
	uint64_t seqno = 0;
	ASSERT_EQ(api_.submit(mj.cmds(), &seqno), 0);
	EXPECT_EQ(api_.gem_close(mj.in_bo), 0);
	EXPECT_EQ(api_.gem_close(mj.out_bo), 0);
	EXPECT_EQ(api_.gem_close(mj.dev), 0);
	ASSERT_EQ(api_.wait_status(seqno), 0);
	EXPECT_EQ(memcmp(out.as<void>(), mj.expect.data(), mj.c_bytes), 0);
	// The job released the device memory when it finished.
	EXPECT_EQ(api_.param(DRM_VNPU_PARAM_DEVMEM_FREE), before);
}

TEST_F(Job, ClosingFdWithJobsInFlightIsSafe)
{
	uint64_t before = api_.param(DRM_VNPU_PARAM_DEVMEM_FREE);
	{
		Fd other(open_device());
		ASSERT_GE(other.get(), 0);
		Api api{other.get()};
		MatmulJob mj(api, 32, 32, 32, 5);
		for (int i = 0; i < 300; i++) {
			uint64_t s = 0;
			ASSERT_EQ(api.submit(mj.cmds(), &s), 0);
		}
	} // fd closed with most jobs still queued
	// This fd keeps working, and the closed file's objects are released once its jobs finish.
	ASSERT_EQ(submit_one(valid_copy()), 0);
	uint64_t free_now = 0;
	for (int i = 0; i < 600; i++) {
		free_now = api_.param(DRM_VNPU_PARAM_DEVMEM_FREE);
		if (free_now == before)
			break;
		usleep(100000);
	}
	EXPECT_EQ(free_now, before);
}

// ---- WAIT ----------------------------------------------------------------------------------------------------------

class Wait : public DeviceTest {
protected:
	/// Submits a job that runs for a while (a 1024^3 matmul): long enough that it is still running right after
	/// SUBMIT returns.
	uint64_t submit_slow_job()
	{
		const uint64_t bytes = 1024ull * 1024 * 4;
		EXPECT_EQ(api_.mem_alloc(3 * bytes, &big_), 0);
		uint64_t seqno = 0;
		EXPECT_EQ(api_.submit({matmul_cmd(big_, 0, big_, bytes, big_, 2 * bytes, 1024, 1024, 1024)}, &seqno), 0);
		return seqno;
	}
	uint32_t big_ = 0;
};

TEST_F(Wait, ReturnsJobResultOnce)
{
	uint64_t seqno = 0;
	ASSERT_EQ(api_.submit({valid_copy()}, &seqno), 0);
	drm_vnpu_wait w{};
	ASSERT_EQ(api_.wait(seqno, deadline_ms(kLongWaitMs), &w), 0);
	EXPECT_EQ(w.job_status, 0);
	EXPECT_EQ(api_.wait(seqno, deadline_ms(kLongWaitMs)), -ENOENT);
}

TEST_F(Wait, UnknownSeqnoReturnsEnoent)
{
	EXPECT_EQ(api_.wait(123456789, 0), -ENOENT);
}

TEST_F(Wait, OtherFilesJobReturnsEnoent)
{
	uint64_t seqno = 0;
	ASSERT_EQ(api_.submit({valid_copy()}, &seqno), 0);
	Fd other(open_device());
	ASSERT_GE(other.get(), 0);
	EXPECT_EQ(Api{other.get()}.wait(seqno, deadline_ms(1000)), -ENOENT);
	EXPECT_EQ(api_.wait_status(seqno), 0);
}

TEST_F(Wait, TimesOutOnUnfinishedJobAndKeepsIt)
{
	uint64_t seqno = submit_slow_job();
	ASSERT_GT(seqno, 0u);
	EXPECT_EQ(api_.wait(seqno, 0), -ETIME);                     // 0 polls
	EXPECT_EQ(api_.wait(seqno, monotonic_ns() - 1000000), -ETIME); // a past deadline polls too
	// A short deadline: either the job is still running (then WAIT blocked until the deadline) or it finished
	// in the meantime (under -icount the job's modelled time is only a few ms); which one is timing, not behaviour.
	int64_t t0 = monotonic_ns();
	drm_vnpu_wait w{};
	int ret = api_.wait(seqno, t0 + 5000000, &w);
	if (ret == -ETIME) {
		EXPECT_GE(monotonic_ns() - t0, 4 * 1000000) << "WAIT returned -ETIME before its deadline";
		// A timed-out WAIT leaves the result to collect.
		EXPECT_EQ(api_.wait_status(seqno), 0);
	} else {
		EXPECT_EQ(ret, 0);
		EXPECT_EQ(w.job_status, 0);
	}
}

TEST_F(Wait, RejectsNonZeroFlags)
{
	uint64_t seqno = 0;
	ASSERT_EQ(api_.submit({valid_copy()}, &seqno), 0);
	drm_vnpu_wait w{};
	w.seqno = seqno;
	w.timeout_ns = deadline_ms(kLongWaitMs);
	w.flags = 1;
	EXPECT_EQ(do_ioctl(fd_, DRM_IOCTL_VNPU_WAIT, &w), -EINVAL);
	EXPECT_EQ(api_.wait_status(seqno), 0);
}

TEST_F(Wait, RejectsQueueOutOfRange)
{
	uint64_t seqno = 0;
	ASSERT_EQ(api_.submit({valid_copy()}, &seqno), 0);
	EXPECT_EQ(api_.wait(seqno, deadline_ms(kLongWaitMs), nullptr,
			    uint32_t(api_.param(DRM_VNPU_PARAM_NUM_QUEUES))),
		  -EINVAL);
	EXPECT_EQ(api_.wait_status(seqno), 0);
}

// ---- io_uring --------------------------------------------------------------------------------------------------

/// An io_uring instance, torn down on destruction.
class Ring {
public:
	explicit Ring(unsigned flags, unsigned entries = 256)
	{
		io_uring_params p{};
		p.flags = flags;
		ret_ = io_uring_queue_init_params(entries, &ring_, &p);
	}
	Ring(const Ring &) = delete;
	Ring &operator=(const Ring &) = delete;
	~Ring() { exit(); }
	void exit()
	{
		if (ret_ == 0)
			io_uring_queue_exit(&ring_);
		ret_ = -1;
	}
	int init_result() const { return ret_; }
	io_uring *get() { return &ring_; }

	/// Queues one DRM_VNPU_URING_CMD_SUBMIT; `extra` is written after the submit struct (must be zero to be valid).
	void prep_submit(int fd, const drm_vnpu_submit &s, uint64_t user_data, uint32_t cmd_op = DRM_VNPU_URING_CMD_SUBMIT,
			 uint8_t extra = 0)
	{
		io_uring_sqe *sqe = io_uring_get_sqe(&ring_);
		ASSERT_NE(sqe, nullptr);
		io_uring_prep_rw(IORING_OP_URING_CMD, sqe, fd, nullptr, 0, 0);
		sqe->cmd_op = cmd_op; // after prep_rw: it shares storage with sqe->off
		size_t area = (flags_sqe128() ? 128 : 64) - offsetof(io_uring_sqe, cmd);
		memset(sqe->cmd, 0, area);
		memcpy(sqe->cmd, &s, std::min(area, sizeof(s)));
		if (extra && area > sizeof(s))
			sqe->cmd[area - 1] = extra;
		io_uring_sqe_set_data64(sqe, user_data);
	}
	bool flags_sqe128() const { return ring_.flags & IORING_SETUP_SQE128; }

private:
	io_uring ring_{};
	int ret_ = -1;
};

struct Cqe {
	uint64_t user_data = 0;
	int32_t res;
	uint64_t extra0 = 0, extra1 = 0;
};

/// Reaps exactly `n` CQEs (waiting up to the long timeout for each).
std::vector<Cqe> reap(Ring &ring, size_t n)
{
	std::vector<Cqe> out;
	bool cqe32 = ring.get()->flags & IORING_SETUP_CQE32;
	while (out.size() < n) {
		io_uring_cqe *cqe = nullptr;
		__kernel_timespec ts{kLongWaitMs / 1000, 0};
		int ret = io_uring_wait_cqe_timeout(ring.get(), &cqe, &ts);
		if (ret) {
			ADD_FAILURE() << "waiting for CQE " << out.size() << " of " << n << ": " << strerror(-ret);
			break;
		}
		out.push_back({cqe->user_data, cqe->res, cqe32 ? cqe->big_cqe[0] : 0, cqe32 ? cqe->big_cqe[1] : 0});
		io_uring_cqe_seen(ring.get(), cqe);
	}
	return out;
}

/// True if another CQE shows up within `ms`.
bool extra_cqe(Ring &ring, int ms)
{
	io_uring_cqe *cqe = nullptr;
	__kernel_timespec ts{0, ms * 1000000LL};
	return io_uring_wait_cqe_timeout(ring.get(), &cqe, &ts) == 0;
}

class Uring : public DeviceTest {
protected:
	static constexpr unsigned kBigRing = IORING_SETUP_SQE128 | IORING_SETUP_CQE32;

	drm_vnpu_submit submit_of(const std::vector<drm_vnpu_cmd> &cmds)
	{
		drm_vnpu_submit s{};
		s.cmds = reinterpret_cast<uintptr_t>(cmds.data());
		s.cmd_count = uint32_t(cmds.size());
		return s;
	}
	/// Submits one SQE and returns its single CQE.
	Cqe run_one(Ring &ring, const drm_vnpu_submit &s, uint32_t cmd_op = DRM_VNPU_URING_CMD_SUBMIT,
		    uint8_t extra = 0)
	{
		ring.prep_submit(fd_, s, 42, cmd_op, extra);
		EXPECT_EQ(io_uring_submit(ring.get()), 1);
		auto cqes = reap(ring, 1);
		EXPECT_EQ(cqes.size(), 1u);
		EXPECT_FALSE(extra_cqe(ring, 50));
		return cqes.empty() ? Cqe{0, 1, 0, 0} : cqes[0];
	}
};

TEST_F(Uring, MatmulPipelineMatchesCpuReference)
{
	Ring ring(kBigRing);
	ASSERT_EQ(ring.init_result(), 0);
	MatmulJob job(api_, 20, 40, 36, 11);
	auto cmds = job.cmds();

	// An ioctl job first, to know roughly which seqno the uring job gets.
	uint64_t before = 0;
	ASSERT_EQ(api_.submit({valid_copy()}, &before), 0);
	Cqe c = run_one(ring, submit_of(cmds));
	EXPECT_EQ(c.user_data, 42u);
	EXPECT_EQ(c.res, 0);
	EXPECT_GT(c.extra0, before); // big_cqe[0] = seqno
	EXPECT_EQ(c.extra1, 0u);
	job.check(fd_);
	EXPECT_EQ(api_.wait_status(before), 0);
}

TEST_F(Uring, OneCqePerJobBeyondRingSize)
{
	Ring ring(kBigRing, 1024);
	ASSERT_EQ(ring.init_result(), 0);
	MatmulJob job(api_, 8, 8, 8, 13);
	auto cmds = job.cmds();
	const size_t n = 900;
	for (size_t i = 0; i < n; i++)
		ring.prep_submit(fd_, submit_of(cmds), 1000 + i);
	ASSERT_EQ(io_uring_submit(ring.get()), int(n));
	auto cqes = reap(ring, n);
	ASSERT_EQ(cqes.size(), n);
	std::set<uint64_t> ids, seqnos;
	for (const Cqe &c : cqes) {
		EXPECT_EQ(c.res, 0) << "user_data " << c.user_data;
		ids.insert(c.user_data);
		seqnos.insert(c.extra0);
	}
	EXPECT_EQ(ids.size(), n);
	EXPECT_EQ(*ids.begin(), 1000u);
	EXPECT_EQ(*ids.rbegin(), 1000u + n - 1);
	EXPECT_EQ(seqnos.size(), n);
	EXPECT_FALSE(extra_cqe(ring, 200));
	job.check(fd_);
}

TEST_F(Uring, WorksWithoutCqe32)
{
	Ring ring(IORING_SETUP_SQE128);
	ASSERT_EQ(ring.init_result(), 0);
	std::vector<drm_vnpu_cmd> cmds = {valid_copy()};
	EXPECT_EQ(run_one(ring, submit_of(cmds)).res, 0);
}

TEST_F(Uring, RejectsRingWithoutSqe128)
{
	Ring ring(0);
	ASSERT_EQ(ring.init_result(), 0);
	std::vector<drm_vnpu_cmd> cmds = {valid_copy()};
	EXPECT_EQ(run_one(ring, submit_of(cmds)).res, -EINVAL);
}

TEST_F(Uring, RejectsUnknownCmdOp)
{
	Ring ring(kBigRing);
	ASSERT_EQ(ring.init_result(), 0);
	std::vector<drm_vnpu_cmd> cmds = {valid_copy()};
	EXPECT_EQ(run_one(ring, submit_of(cmds), 0x7f).res, -EINVAL);
}

TEST_F(Uring, RejectsNonZeroTrailingCommandBytes)
{
	Ring ring(kBigRing);
	ASSERT_EQ(ring.init_result(), 0);
	std::vector<drm_vnpu_cmd> cmds = {valid_copy()};
	EXPECT_EQ(run_one(ring, submit_of(cmds), DRM_VNPU_URING_CMD_SUBMIT, 1).res, -EINVAL);
}

TEST_F(Uring, RejectsNonZeroSeqno)
{
	Ring ring(kBigRing);
	ASSERT_EQ(ring.init_result(), 0);
	std::vector<drm_vnpu_cmd> cmds = {valid_copy()};
	auto s = submit_of(cmds);
	s.seqno = 5;
	EXPECT_EQ(run_one(ring, s).res, -EINVAL);
}

TEST_F(Uring, RejectsNonZeroFlags)
{
	Ring ring(kBigRing);
	ASSERT_EQ(ring.init_result(), 0);
	std::vector<drm_vnpu_cmd> cmds = {valid_copy()};
	auto s = submit_of(cmds);
	s.flags = 1;
	EXPECT_EQ(run_one(ring, s).res, -EINVAL);
}

TEST_F(Uring, ValidationErrorsCompleteAtOnce)
{
	Ring ring(kBigRing);
	ASSERT_EQ(ring.init_result(), 0);
	auto bad = valid_copy();
	bad.copy.bo_handle = 0xdead;
	std::vector<drm_vnpu_cmd> cmds = {bad};
	EXPECT_EQ(run_one(ring, submit_of(cmds)).res, -ENOENT);
	cmds[0] = valid_copy();
	cmds[0].copy.mem_handle = bo_;
	EXPECT_EQ(run_one(ring, submit_of(cmds)).res, -EINVAL);
	auto s = submit_of(cmds);
	s.cmd_count = 0;
	EXPECT_EQ(run_one(ring, s).res, -EINVAL);
	s = submit_of(cmds);
	s.queue = 1000;
	EXPECT_EQ(run_one(ring, s).res, -EINVAL);
}

TEST_F(Uring, UringJobsAreNotVisibleToWait)
{
	Ring ring(kBigRing);
	ASSERT_EQ(ring.init_result(), 0);
	std::vector<drm_vnpu_cmd> cmds = {valid_copy()};
	Cqe c = run_one(ring, submit_of(cmds));
	ASSERT_EQ(c.res, 0);
	EXPECT_EQ(api_.wait(c.extra0, 0), -ENOENT);
}

TEST_F(Uring, RingTeardownWithJobsInFlightIsSafe)
{
	uint64_t before = api_.param(DRM_VNPU_PARAM_DEVMEM_FREE);
	{
		MatmulJob job(api_, 32, 32, 32, 17);
		auto cmds = job.cmds();
		Ring ring(kBigRing, 512);
		ASSERT_EQ(ring.init_result(), 0);
		for (int i = 0; i < 400; i++)
			ring.prep_submit(fd_, submit_of(cmds), i);
		ASSERT_EQ(io_uring_submit(ring.get()), 400);
		ring.exit(); // pending commands are cancelled; the jobs still run
		EXPECT_EQ(api_.gem_close(job.in_bo), 0);
		EXPECT_EQ(api_.gem_close(job.out_bo), 0);
		EXPECT_EQ(api_.gem_close(job.dev), 0);
	}
	ASSERT_EQ(submit_one(valid_copy()), 0);
	uint64_t free_now = 0;
	for (int i = 0; i < 600; i++) {
		free_now = api_.param(DRM_VNPU_PARAM_DEVMEM_FREE);
		if (free_now == before)
			break;
		usleep(100000);
	}
	EXPECT_EQ(free_now, before);
}

TEST_F(Uring, ClosingFdAndRingWithJobsInFlightIsSafe)
{
	uint64_t before = api_.param(DRM_VNPU_PARAM_DEVMEM_FREE);
	{
		Fd other(open_device());
		ASSERT_GE(other.get(), 0);
		Api api{other.get()};
		MatmulJob job(api, 32, 32, 32, 19);
		auto cmds = job.cmds();
		Ring ring(kBigRing, 512);
		ASSERT_EQ(ring.init_result(), 0);
		for (int i = 0; i < 300; i++)
			ring.prep_submit(other.get(), submit_of(cmds), i);
		ASSERT_EQ(io_uring_submit(ring.get()), 300);
		other.reset(); // the ring still holds the file
	} // ring exits, then the file is released
	ASSERT_EQ(submit_one(valid_copy()), 0);
	uint64_t free_now = 0;
	for (int i = 0; i < 600; i++) {
		free_now = api_.param(DRM_VNPU_PARAM_DEVMEM_FREE);
		if (free_now == before)
			break;
		usleep(100000);
	}
	EXPECT_EQ(free_now, before);
}

// ---- device faults ---------------------------------------------------------------------------------------------

/// The driver's debugfs knob of accel0 that makes a queue fail as on a device fault (needs CONFIG_DEBUG_FS and
/// debugfs mounted): /sys/kernel/debug/accel/<PCI address>/inject_queue_error.
std::string inject_queue_error_path()
{
	char link[512];
	ssize_t n = readlink("/sys/class/accel/accel0/device", link, sizeof(link) - 1);
	if (n <= 0)
		return {};
	link[n] = 0;
	std::string pci = link;
	pci = pci.substr(pci.rfind('/') + 1);
	return "/sys/kernel/debug/accel/" + pci + "/inject_queue_error";
}

class Fault : public Wait {
protected:
	void inject(uint32_t queue)
	{
		int fd = open(inject_queue_error_path().c_str(), O_WRONLY | O_CLOEXEC);
		ASSERT_GE(fd, 0) << inject_queue_error_path() << ": " << strerror(errno);
		std::string q = std::to_string(queue);
		EXPECT_EQ(write(fd, q.data(), q.size()), ssize_t(q.size()));
		close(fd);
	}
	void SetUp() override
	{
		Wait::SetUp();
		if (!IsSkipped() && access(inject_queue_error_path().c_str(), W_OK) != 0)
			GTEST_SKIP() << "accel0's inject_queue_error debugfs file is not available";
	}
};

TEST_F(Fault, QueueErrorFailsRunningJobWithEioAndQueueRecovers)
{
	uint64_t slow = submit_slow_job();
	ASSERT_GT(slow, 0u);
	MatmulJob after(api_, 16, 16, 16, 23);
	inject(0);
	drm_vnpu_wait w{};
	ASSERT_EQ(api_.wait(slow, deadline_ms(kLongWaitMs), &w), 0);
	EXPECT_EQ(w.job_status, -EIO);
	// Jobs submitted after the fault run normally on the re-enabled queue.
	uint64_t seqno = 0;
	ASSERT_EQ(api_.submit(after.cmds(), &seqno), 0);
	ASSERT_EQ(api_.wait_status(seqno), 0);
	after.check(fd_);
}

TEST_F(Fault, QueueErrorNeverLosesJobs)
{
	// Every job completes exactly once, either normally or with -EIO, however the fault lands among them.
	MatmulJob mj(api_, 16, 16, 16, 29);
	std::vector<uint64_t> seqnos;
	for (int i = 0; i < 400; i++) {
		uint64_t s = 0;
		ASSERT_EQ(api_.submit(mj.cmds(), &s), 0);
		seqnos.push_back(s);
		if (i == 150)
			inject(0);
	}
	for (uint64_t s : seqnos) {
		int st = api_.wait_status(s);
		EXPECT_TRUE(st == 0 || st == -EIO) << "seqno " << s << ": " << st;
	}
	uint64_t s = 0;
	ASSERT_EQ(api_.submit(mj.cmds(), &s), 0);
	EXPECT_EQ(api_.wait_status(s), 0);
	mj.check(fd_);
}

TEST_F(Fault, UringJobSeesDeviceFault)
{
	Ring ring(IORING_SETUP_SQE128 | IORING_SETUP_CQE32);
	ASSERT_EQ(ring.init_result(), 0);
	const uint64_t bytes = 1024ull * 1024 * 4;
	ASSERT_EQ(api_.mem_alloc(3 * bytes, &big_), 0);
	std::vector<drm_vnpu_cmd> cmds = {matmul_cmd(big_, 0, big_, bytes, big_, 2 * bytes, 1024, 1024, 1024)};
	drm_vnpu_submit s{};
	s.cmds = reinterpret_cast<uintptr_t>(cmds.data());
	s.cmd_count = 1;
	ring.prep_submit(fd_, s, 7);
	ASSERT_EQ(io_uring_submit(ring.get()), 1);
	inject(0);
	auto cqes = reap(ring, 1);
	ASSERT_EQ(cqes.size(), 1u);
	EXPECT_EQ(cqes[0].res, -EIO);
}

} // namespace
