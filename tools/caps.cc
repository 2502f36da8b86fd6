#include "caps.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <vector>

#ifdef IBDBG_HAVE_VERBS_H
#include <infiniband/verbs.h>
#endif

namespace ibdbg::tools {

#ifdef IBDBG_HAVE_VERBS_H
namespace {

using ojson = nlohmann::ordered_json;

// The entry points we use, by their exported names (verbs.h wraps some of
// them in inline functions and macros).
struct Verbs {
  void* lib = nullptr;
  struct ibv_device** (*get_device_list)(int*);
  void (*free_device_list)(struct ibv_device**);
  const char* (*get_device_name)(struct ibv_device*);
  struct ibv_context* (*open_device)(struct ibv_device*);
  int (*close_device)(struct ibv_context*);
  int (*query_device)(struct ibv_context*, struct ibv_device_attr*);
  int (*query_port)(struct ibv_context*, uint8_t, struct ibv_port_attr*);
  int (*query_gid)(struct ibv_context*, uint8_t, int, union ibv_gid*);
  int (*query_gid_ex)(struct ibv_context*, uint32_t, uint32_t, struct ibv_gid_entry*, uint32_t, size_t);
  struct ibv_pd* (*alloc_pd)(struct ibv_context*);
  int (*dealloc_pd)(struct ibv_pd*);
  struct ibv_cq* (*create_cq)(struct ibv_context*, int, void*, struct ibv_comp_channel*, int);
  int (*destroy_cq)(struct ibv_cq*);
  struct ibv_qp* (*create_qp)(struct ibv_pd*, struct ibv_qp_init_attr*);
  int (*destroy_qp)(struct ibv_qp*);

  Verbs() {
    lib = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!lib)
      throw std::runtime_error(std::string("cannot load libibverbs.so.1 (") + dlerror() +
                               "): install rdma-core's libibverbs, or run under `ibdbg softrdma`");
    Bind(get_device_list, "ibv_get_device_list");
    Bind(free_device_list, "ibv_free_device_list");
    Bind(get_device_name, "ibv_get_device_name");
    Bind(open_device, "ibv_open_device");
    Bind(close_device, "ibv_close_device");
    Bind(query_device, "ibv_query_device");
    Bind(query_port, "ibv_query_port");
    Bind(query_gid, "ibv_query_gid");
    Bind(alloc_pd, "ibv_alloc_pd");
    Bind(dealloc_pd, "ibv_dealloc_pd");
    Bind(create_cq, "ibv_create_cq");
    Bind(destroy_cq, "ibv_destroy_cq");
    Bind(create_qp, "ibv_create_qp");
    Bind(destroy_qp, "ibv_destroy_qp");
    query_gid_ex = reinterpret_cast<decltype(query_gid_ex)>(dlsym(lib, "_ibv_query_gid_ex"));  // 1.11+
  }
  template <class F>
  void Bind(F& f, const char* name) {
    f = reinterpret_cast<F>(dlsym(lib, name));
    if (!f) throw std::runtime_error(std::string("libibverbs.so.1 has no ") + name);
  }
};

uint32_t MtuBytes(int m) { return m >= 1 && m <= 5 ? 128u << m : 0; }

std::string GidText(const uint8_t* g) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x", g[0],
                g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
  return buf;
}

const char* LinkName(uint8_t l) {
  // 0 (unspecified) is what older providers report for InfiniBand.
  return l == IBV_LINK_LAYER_ETHERNET ? "ethernet" : "infiniband";
}

bool TryQp(const Verbs& v, struct ibv_pd* pd, struct ibv_cq* cq, uint32_t inl, uint32_t* got) {
  struct ibv_qp_init_attr a;
  std::memset(&a, 0, sizeof a);
  a.send_cq = a.recv_cq = cq;
  a.qp_type = IBV_QPT_RC;
  a.cap.max_send_wr = a.cap.max_recv_wr = 1;
  a.cap.max_send_sge = a.cap.max_recv_sge = 1;
  a.cap.max_inline_data = inl;
  struct ibv_qp* qp = v.create_qp(pd, &a);
  if (!qp) return false;
  *got = a.cap.max_inline_data;
  v.destroy_qp(qp);
  return true;
}

// Providers do not report max_inline_data: the largest a QP can be created
// with (they may give more than asked; that is what they allow then).
int64_t ProbeInline(const Verbs& v, struct ibv_context* ctx) {
  struct ibv_pd* pd = v.alloc_pd(ctx);
  if (!pd) return -1;
  struct ibv_cq* cq = v.create_cq(ctx, 2, nullptr, nullptr, 0);
  if (!cq) {
    v.dealloc_pd(pd);
    return -1;
  }
  int64_t best = -1;
  uint32_t got = 0;
  if (TryQp(v, pd, cq, 0, &got)) {
    best = got;
    uint32_t lo = 0, hi = 65536;
    if (TryQp(v, pd, cq, hi, &got)) {
      best = got;
    } else {
      while (hi - lo > 1) {  // lo works, hi does not
        uint32_t mid = lo + (hi - lo) / 2;
        if (TryQp(v, pd, cq, mid, &got)) {
          lo = mid;
          if ((int64_t)got > best) best = got;
        } else {
          hi = mid;
        }
      }
      if ((int64_t)lo > best) best = lo;
    }
  }
  v.destroy_cq(cq);
  v.dealloc_pd(pd);
  return best;
}

ojson Describe(const Verbs& v, struct ibv_device* dev) {
  ojson d;
  d["name"] = v.get_device_name(dev);
  struct ibv_context* ctx = v.open_device(dev);
  if (!ctx) {
    d["error"] = "cannot open the device";
    return d;
  }
  struct ibv_device_attr da;
  struct ibv_port_attr pa;
  std::memset(&da, 0, sizeof da);
  std::memset(&pa, 0, sizeof pa);
  if (v.query_device(ctx, &da) || v.query_port(ctx, 1, &pa)) {
    d["error"] = "cannot query the device or its port 1";
    v.close_device(ctx);
    return d;
  }
  d["port"] = 1;
  d["phys_port_cnt"] = da.phys_port_cnt;
  d["link_layer"] = LinkName(pa.link_layer);
  d["port_state"] = pa.state == IBV_PORT_ACTIVE ? "active" : "not active";
  d["lid"] = pa.lid;
  d["active_mtu"] = MtuBytes(pa.active_mtu);
  d["max_mtu"] = MtuBytes(pa.max_mtu);
  ojson gids = ojson::array();
  for (int i = 0; i < pa.gid_tbl_len; i++) {
    ojson g;
    union ibv_gid gid;
    std::string type = "unknown";
    struct ibv_gid_entry e;
    std::memset(&e, 0, sizeof e);
    if (v.query_gid_ex && v.query_gid_ex(ctx, 1, i, &e, 0, sizeof e) == 0) {
      gid = e.gid;
      type = e.gid_type == IBV_GID_TYPE_ROCE_V2 ? "RoCE v2" : e.gid_type == IBV_GID_TYPE_ROCE_V1 ? "RoCE v1" : "IB";
    } else if (v.query_gid(ctx, 1, i, &gid) != 0) {
      continue;
    } else if (pa.link_layer != IBV_LINK_LAYER_ETHERNET) {
      type = "IB";
    }
    static const uint8_t zero[16] = {};
    if (!std::memcmp(gid.raw, zero, 16)) continue;  // an empty slot of the table
    g["index"] = i;
    g["gid"] = GidText(gid.raw);
    g["type"] = type;
    gids.push_back(std::move(g));
  }
  d["gids"] = std::move(gids);
  int64_t inl = ProbeInline(v, ctx);
  if (inl >= 0) d["max_inline_data"] = inl;
  d["max_inline_data_source"] = inl >= 0 ? "probe (largest a QP could be created with)" : "unknown (probe failed)";
  d["max_sge"] = da.max_sge;
  d["max_qp_wr"] = da.max_qp_wr;
  d["max_cqe"] = da.max_cqe;
  d["max_qp_rd_atom"] = da.max_qp_rd_atom;
  d["max_qp_init_rd_atom"] = da.max_qp_init_rd_atom;
  d["max_srq_wr"] = da.max_srq_wr;
  d["max_srq_sge"] = da.max_srq_sge;
  d["atomic_cap"] = (unsigned)da.atomic_cap;
  d["max_qp"] = da.max_qp;
  d["max_cq"] = da.max_cq;
  d["max_mr"] = da.max_mr;
  d["max_pd"] = da.max_pd;
  d["max_ah"] = da.max_ah;
  d["max_srq"] = da.max_srq;
  d["max_mr_size"] = da.max_mr_size;
  d["fw_ver"] = std::string(da.fw_ver, strnlen(da.fw_ver, sizeof da.fw_ver));
  v.close_device(ctx);
  return d;
}

}  // namespace

std::string CapsJson() {
  Verbs v;
  int n = 0;
  struct ibv_device** list = v.get_device_list(&n);
  ojson devs = ojson::array();
  for (int i = 0; list && i < n; i++) devs.push_back(Describe(v, list[i]));
  if (list) v.free_device_list(list);
  ojson doc;
  doc["devices"] = std::move(devs);
  return doc.dump(2) + "\n";
}

uint32_t DeviceLinkLayer(const std::string& name) {
  Verbs v;
  int n = 0;
  struct ibv_device** list = v.get_device_list(&n);
  std::string have;
  uint32_t ll = 0;
  bool found = false;
  for (int i = 0; list && i < n && !found; i++) {
    std::string dn = v.get_device_name(list[i]);
    have += (have.empty() ? "" : ", ") + dn;
    if (dn != name) continue;
    found = true;
    struct ibv_context* ctx = v.open_device(list[i]);
    struct ibv_port_attr pa;
    std::memset(&pa, 0, sizeof pa);
    if (ctx && v.query_port(ctx, 1, &pa) == 0)
      ll = pa.link_layer == IBV_LINK_LAYER_ETHERNET ? 2 : 1;
    if (ctx) v.close_device(ctx);
  }
  if (list) v.free_device_list(list);
  if (!found)
    throw std::runtime_error("no verbs device " + name + " here (" + (have.empty() ? "there is none" : "there is " + have) +
                             ")");
  if (!ll) throw std::runtime_error("cannot query port 1 of " + name);
  return ll;
}

#else  // built without libibverbs' headers

std::string CapsJson() { throw std::runtime_error("this ibdbg was built without libibverbs' headers: no `caps`"); }
uint32_t DeviceLinkLayer(const std::string& name) {
  throw std::runtime_error("this ibdbg was built without libibverbs' headers: cannot query " + name);
}

#endif

}  // namespace ibdbg::tools
