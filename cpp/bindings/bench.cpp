#include <pybind11/stl.h>

#include <chrono>
#include <thread>
#include <vector>

#include "bindings.hpp"
#include "driftgate/drift_tracker.hpp"
#include "fast_method.hpp"

namespace driftgate::bindings {

namespace {

struct Noop {};

py::object noop_record_fast(py::handle self, PyObject* const* args, Py_ssize_t nargs,
                            PyObject* kwnames) {
    self_as<Noop>(self);
    match_arguments<3>("record_fast", {"policy_id", "shadow", "enforced"}, args, nargs, kwnames);
    return py::bool_(false);
}

py::object noop_decide_fast(py::handle self, PyObject* const* args, Py_ssize_t nargs,
                            PyObject* kwnames) {
    self_as<Noop>(self);
    match_arguments<4>("decide_fast", {"policy_id", "key", "shadow", "enforced"}, args, nargs,
                       kwnames);
    return py::none();
}

py::object noop_call_both(py::handle self, PyObject* const* args, Py_ssize_t nargs,
                          PyObject* kwnames) {
    self_as<Noop>(self);
    const auto arguments = match_arguments<4>(
        "call_both", {"policy_id", "key", "shadow", "enforced"}, args, nargs, kwnames);
    for (PyObject* callable : {arguments[2], arguments[3]}) {
        PyObject* result = PyObject_CallNoArgs(callable);
        if (result == nullptr) throw py::error_already_set();
        Py_DECREF(result);
    }
    return py::none();
}

}  // namespace

// Baselines and native loops for benchmarks/: measured in the same run as the figures they
// are compared with. Not part of the public API.
void register_bench(py::module_& m) {
    py::module_ bench = m.def_submodule("_bench", "Benchmark baselines; not public API.");

    bench.def(
        "noop_record", [](std::string_view, Verdict, Verdict) { return false; },
        py::arg("policy_id"), py::arg("shadow"), py::arg("enforced"),
        "An empty bound function with DriftTracker.record's argument types.");

    bench.def(
        "noop_handles", [](py::handle, py::handle, py::handle) { return false; },
        py::arg("policy_id"), py::arg("shadow"), py::arg("enforced"),
        "An empty bound function taking three objects: pybind11's cheapest call.");

    py::class_<Noop, std::shared_ptr<Noop>> noop(bench, "Noop",
                                                 "An object with an empty fast method.");
    noop.def(py::init<>());
    def_fast<&noop_record_fast>(noop, "record_fast",
                                "An empty fast method with record's signature and self lookup.");
    def_fast<&noop_decide_fast>(noop, "decide_fast",
                                "An empty fast method with Enforcer.decide's signature.");
    def_fast<&noop_call_both>(noop, "call_both",
                              "A fast method with Enforcer.decide's signature that calls its "
                              "two verdict callables and nothing else.");

    bench.def(
        "native_record",
        [](DriftTracker& tracker, const std::vector<std::string>& policy_ids,
           std::uint64_t records_per_thread, unsigned threads) {
            if (policy_ids.empty() || threads == 0) {
                throw py::value_error("native_record needs policy ids and threads >= 1");
            }
            py::gil_scoped_release release;
            auto work = [&](unsigned offset) {
                const std::size_t n = policy_ids.size();
                std::size_t next = offset % n;
                for (std::uint64_t i = 0; i < records_per_thread; ++i) {
                    const Verdict enforced = (i & 63) == 0 ? Verdict::Fail : Verdict::Ok;
                    tracker.record(policy_ids[next], Verdict::Ok, enforced);
                    if (++next == n) next = 0;
                }
            };
            const auto start = std::chrono::steady_clock::now();
            std::vector<std::thread> pool;
            for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work, t);
            work(0);
            for (auto& thread : pool) thread.join();
            return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        },
        py::arg("tracker"), py::arg("policy_ids"), py::arg("records_per_thread"),
        py::arg("threads") = 1,
        "Seconds for `threads` native threads to record records_per_thread each.");
}

}  // namespace driftgate::bindings
