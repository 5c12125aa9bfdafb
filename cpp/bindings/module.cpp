#include "bindings.hpp"

PYBIND11_MODULE(_core, m) {
    using namespace driftgate::bindings;
    m.doc() = "driftgate's C++ core. Import from driftgate, not from here.";
    register_clock(m);
    register_verdict(m);
    register_metrics(m);
    register_tracker(m);
    register_enforcer(m);
    register_signatures(m);
    register_rollout(m);
    register_gate(m);
    register_bench(m);
}
