/* softrdma: rdma-core's provider-internal entry points (IBVERBS_PRIVATE_34)
 * and the kernel-ABI copy helpers.
 *
 * They exist so that libraries linked against libibverbs with BIND_NOW (the
 * mlx5 and efa direct-verbs libraries that perftest links, librdmacm) load
 * next to softrdma. softrdma has no kernel device, so no provider ever gets a
 * device from us and these are never reached with one: each refuses. */
#include <errno.h>
#include <stddef.h>

#define SR_EXPORT __attribute__((visibility("default")))

#define REFUSE_INT(name) \
  SR_EXPORT int name(void) { errno = EOPNOTSUPP; return EOPNOTSUPP; }
#define REFUSE_PTR(name) \
  SR_EXPORT void *name(void) { errno = EOPNOTSUPP; return NULL; }
#define NOTHING(name) \
  SR_EXPORT void name(void) {}

/* void: called from the providers' load-time constructors */
NOTHING(verbs_register_driver_34)
NOTHING(verbs_set_ops)
NOTHING(verbs_uninit_context)
NOTHING(verbs_init_cq)
NOTHING(ibv_copy_ah_attr_from_kern)
NOTHING(ibv_copy_qp_attr_from_kern)
NOTHING(ibv_copy_path_rec_from_kern)
NOTHING(ibv_copy_path_rec_to_kern)
SR_EXPORT void __verbs_log(void *ctx, const char *fmt, ...) { (void)ctx; (void)fmt; }
SR_EXPORT unsigned int __ioctl_final_num_attrs(unsigned int num_attrs, void *link) { (void)link; return num_attrs; }

REFUSE_PTR(_verbs_init_and_alloc_context)
REFUSE_PTR(verbs_open_device)
REFUSE_INT(verbs_allow_disassociate_destroy)
REFUSE_INT(execute_ioctl)
REFUSE_INT(ibv_read_ibdev_sysfs_file)
REFUSE_INT(ibv_cmd_advise_mr)
REFUSE_INT(ibv_cmd_alloc_dm)
REFUSE_INT(ibv_cmd_alloc_mw)
REFUSE_INT(ibv_cmd_alloc_pd)
REFUSE_INT(ibv_cmd_attach_mcast)
REFUSE_INT(ibv_cmd_close_xrcd)
REFUSE_INT(ibv_cmd_create_ah)
REFUSE_INT(ibv_cmd_create_counters)
REFUSE_INT(ibv_cmd_create_cq)
REFUSE_INT(ibv_cmd_create_cq_ex)
REFUSE_INT(ibv_cmd_create_flow)
REFUSE_INT(ibv_cmd_create_flow_action_esp)
REFUSE_INT(ibv_cmd_create_qp)
REFUSE_INT(ibv_cmd_create_qp_ex)
REFUSE_INT(ibv_cmd_create_qp_ex2)
REFUSE_INT(ibv_cmd_create_rwq_ind_table)
REFUSE_INT(ibv_cmd_create_srq)
REFUSE_INT(ibv_cmd_create_srq_ex)
REFUSE_INT(ibv_cmd_create_wq)
REFUSE_INT(ibv_cmd_dealloc_mw)
REFUSE_INT(ibv_cmd_dealloc_pd)
REFUSE_INT(ibv_cmd_dereg_mr)
REFUSE_INT(ibv_cmd_destroy_ah)
REFUSE_INT(ibv_cmd_destroy_counters)
REFUSE_INT(ibv_cmd_destroy_cq)
REFUSE_INT(ibv_cmd_destroy_flow)
REFUSE_INT(ibv_cmd_destroy_flow_action)
REFUSE_INT(ibv_cmd_destroy_qp)
REFUSE_INT(ibv_cmd_destroy_rwq_ind_table)
REFUSE_INT(ibv_cmd_destroy_srq)
REFUSE_INT(ibv_cmd_destroy_wq)
REFUSE_INT(ibv_cmd_detach_mcast)
REFUSE_INT(ibv_cmd_free_dm)
REFUSE_INT(ibv_cmd_get_context)
REFUSE_INT(ibv_cmd_modify_cq)
REFUSE_INT(ibv_cmd_modify_flow_action_esp)
REFUSE_INT(ibv_cmd_modify_qp)
REFUSE_INT(ibv_cmd_modify_qp_ex)
REFUSE_INT(ibv_cmd_modify_srq)
REFUSE_INT(ibv_cmd_modify_wq)
REFUSE_INT(ibv_cmd_open_qp)
REFUSE_INT(ibv_cmd_open_xrcd)
REFUSE_INT(ibv_cmd_poll_cq)
REFUSE_INT(ibv_cmd_post_recv)
REFUSE_INT(ibv_cmd_post_send)
REFUSE_INT(ibv_cmd_post_srq_recv)
REFUSE_INT(ibv_cmd_query_context)
REFUSE_INT(ibv_cmd_query_device_any)
REFUSE_INT(ibv_cmd_query_mr)
REFUSE_INT(ibv_cmd_query_port)
REFUSE_INT(ibv_cmd_query_qp)
REFUSE_INT(ibv_cmd_query_srq)
REFUSE_INT(ibv_cmd_read_counters)
REFUSE_INT(ibv_cmd_reg_dm_mr)
REFUSE_INT(ibv_cmd_reg_dmabuf_mr)
REFUSE_INT(ibv_cmd_reg_mr)
REFUSE_INT(ibv_cmd_req_notify_cq)
REFUSE_INT(ibv_cmd_rereg_mr)
REFUSE_INT(ibv_cmd_resize_cq)
