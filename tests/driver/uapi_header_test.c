/*
 * The uAPI header is self-contained: this C file includes nothing but vnpu_accel.h (which includes DRM's drm.h
 * from libdrm's include directory) and uses every constant a caller compares with. It used to go wrong:
 * capability bits, hardware status values and the largest priority lived only in the device's vnpu_hw.h.
 */
#include <vnpu_accel.h>

#include <stddef.h>

/* Layouts: fixed sizes, multiples of 8, no holes (Documentation/process/botching-up-ioctls.rst). */
_Static_assert(sizeof(struct drm_vnpu_get_param) == 16, "get_param");
_Static_assert(sizeof(struct drm_vnpu_bo_create) == 32, "bo_create");
_Static_assert(sizeof(struct drm_vnpu_mem_alloc) == 24, "mem_alloc");
_Static_assert(sizeof(struct drm_vnpu_bo_info) == 40, "bo_info");
_Static_assert(sizeof(struct drm_vnpu_queue_create) == 16, "queue_create");
_Static_assert(sizeof(struct drm_vnpu_queue_destroy) == 8, "queue_destroy");
_Static_assert(sizeof(struct drm_vnpu_cmd) == 64, "cmd");
_Static_assert(sizeof(struct drm_vnpu_dep) == 16, "dep");
_Static_assert(sizeof(struct drm_vnpu_job) == 48, "job");
_Static_assert(sizeof(struct drm_vnpu_submit) == 32, "submit");
_Static_assert(sizeof(struct drm_vnpu_job_report) == 72, "job_report");
_Static_assert(sizeof(struct drm_vnpu_event_job) == 32, "event_job");
_Static_assert(sizeof(struct drm_vnpu_wait) == 48, "wait");
_Static_assert(sizeof(struct drm_vnpu_uring_submit) == 56, "uring_submit");
_Static_assert(offsetof(struct drm_vnpu_job_report, flags) == 68, "report flags last");

static const unsigned long long uapi_values[] = {
	DRM_VNPU_MAX_PRIORITY, DRM_VNPU_DEFAULT_PRIORITY, DRM_VNPU_MAX_QUEUES, DRM_VNPU_SEQNO_HISTORY,
	DRM_VNPU_MAX_RESULTS, DRM_VNPU_MAX_CMDS, DRM_VNPU_MAX_JOBS, DRM_VNPU_MAX_DEPS,
	DRM_VNPU_CAP_DMA_SG, DRM_VNPU_CAP_OP_MATMUL, DRM_VNPU_CAP_MMU, DRM_VNPU_CAP_EXEC, DRM_VNPU_CAP_SYNTH,
	DRM_VNPU_CAP_FAULT_INJECT, DRM_VNPU_CAP_TIMING_ONLY, DRM_VNPU_CAP_TELEMETRY,
	DRM_VNPU_HW_OK, DRM_VNPU_HW_BAD_OPCODE, DRM_VNPU_HW_BAD_FIELD, DRM_VNPU_HW_DEVMEM_RANGE,
	DRM_VNPU_HW_SGL_INVALID, DRM_VNPU_HW_DMA_FAULT, DRM_VNPU_HW_ABORTED, DRM_VNPU_HW_JOB_TOO_LONG,
	DRM_VNPU_HW_MMU_FAULT, DRM_VNPU_HW_PROGRAM_INVALID, DRM_VNPU_HW_BAD_CONTEXT,
	DRM_IOCTL_VNPU_GET_PARAM, DRM_IOCTL_VNPU_BO_CREATE, DRM_IOCTL_VNPU_MEM_ALLOC, DRM_IOCTL_VNPU_SUBMIT,
	DRM_IOCTL_VNPU_WAIT, DRM_IOCTL_VNPU_BO_INFO, DRM_IOCTL_VNPU_QUEUE_CREATE, DRM_IOCTL_VNPU_QUEUE_DESTROY,
	DRM_VNPU_URING_CMD_SUBMIT, DRM_VNPU_EVENT_JOB, DRM_VNPU_REPORT_F_VALID, DRM_VNPU_SUBMIT_F_EVENT,
	DRM_VNPU_BO_WC,
};

int main(void)
{
	/* The capability bits are distinct single bits. */
	unsigned long long caps = 0;
	for (unsigned int i = 8; i < 16; i++) {
		if (uapi_values[i] & caps || uapi_values[i] & (uapi_values[i] - 1))
			return 1;
		caps |= uapi_values[i];
	}
	return DRM_VNPU_MAX_PRIORITY > DRM_VNPU_DEFAULT_PRIORITY ? 0 : 1;
}
