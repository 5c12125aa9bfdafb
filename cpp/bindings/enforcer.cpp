#include <pybind11/stl.h>

#include <array>

#include "bindings.hpp"
#include "driftgate/enforcer.hpp"
#include "driftgate/sampling.hpp"
#include "fast_method.hpp"

namespace driftgate::bindings {

namespace {

/// Calls a Python callable through vectorcall, without an argument tuple: its verdict, or
/// nullopt when it raised an Exception or returned something else. BaseExceptions such as
/// KeyboardInterrupt propagate.
std::optional<Verdict> call_verdict(void* callable) {
    PyObject* result = PyObject_CallNoArgs(static_cast<PyObject*>(callable));
    if (result == nullptr) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) throw py::error_already_set();
        PyErr_Clear();
        return std::nullopt;
    }
    std::optional<Verdict> verdict = verdict_member(result);
    if (!verdict) verdict = try_verdict(result);
    Py_DECREF(result);
    return verdict;
}

/// A verdict argument of decide(): a verdict, or a zero-argument callable evaluated only when
/// needed. A callable that raises an Exception, or returns something that is not a verdict,
/// is a failed evaluation (FAIL). BaseExceptions such as KeyboardInterrupt propagate.
inline VerdictSource verdict_source(py::handle value, const char* argument) {
    if (auto verdict = verdict_member(value)) return *verdict;
    // A verdict's name is looked for only in a str: the common case, a callable, skips it.
    const bool text = PyUnicode_Check(value.ptr());
    if (text) {
        if (auto verdict = try_verdict(value)) return *verdict;
    }
    if (text || PyCallable_Check(value.ptr()) == 0) {
        throw py::value_error(std::string("invalid verdict for ") + argument + ": " +
                              short_repr(value) +
                              "; expected a Verdict, 'ok'/'warn'/'fail', or a callable "
                              "returning one");
    }
    // The callable is borrowed: decide() evaluates it before it returns, while the caller's
    // arguments still hold it.
    return Evaluator(&call_verdict, value.ptr());
}

/// VerdictPair is immutable and has 18 possible values (drift follows from the verdicts), so
/// decide() answers with one made up front instead of allocating an instance per call.
class VerdictPairs {
  public:
    VerdictPairs() {
        for (std::size_t shadow = 0; shadow < kVerdicts; ++shadow) {
            for (std::size_t enforced = 0; enforced < kVerdicts; ++enforced) {
                for (std::size_t in_rollout = 0; in_rollout < 2; ++in_rollout) {
                    VerdictPair pair{static_cast<Verdict>(shadow), static_cast<Verdict>(enforced),
                                     in_rollout == 1, shadow != enforced};
                    // Kept for the life of the process, like the type itself.
                    pairs_[index(pair)] = py::cast(pair).release().ptr();
                }
            }
        }
    }

    py::object of(const VerdictPair& pair) const {
        return py::reinterpret_borrow<py::object>(pairs_[index(pair)]);
    }

  private:
    static constexpr std::size_t kVerdicts = 3;
    static std::size_t index(const VerdictPair& pair) {
        return (static_cast<std::size_t>(pair.shadow) * kVerdicts +
                static_cast<std::size_t>(pair.enforced)) *
                   2 +
               (pair.in_rollout ? 1 : 0);
    }
    std::array<PyObject*, kVerdicts * kVerdicts * 2> pairs_{};
};

const VerdictPairs* verdict_pairs = nullptr;

py::object decide_fast(py::handle self, PyObject* const* args, Py_ssize_t nargs,
                       PyObject* kwnames) {
    Enforcer& enforcer = self_as<Enforcer>(self);
    const auto [policy_id, key, shadow, enforced] = match_arguments<4>(
        "decide", {"policy_id", "key", "shadow", "enforced"}, args, nargs, kwnames);
    const std::string_view policy = text_arg(policy_id, "policy_id", false);
    const std::string_view key_text = text_arg(key, "key");
    return verdict_pairs->of(enforcer.decide(policy, key_text, verdict_source(shadow, "shadow"),
                                             verdict_source(enforced, "enforced")));
}

EnforceOptions make_options(bool enforce, double rollout_percent, double drift_max_ratio) {
    EnforceOptions options{enforce, rollout_percent, drift_max_ratio};
    options.validate();
    return options;
}

}  // namespace

void register_enforcer(py::module_& m) {
    py::class_<EnforceOptions>(m, "EnforceOptions",
                               "Whether to enforce, on what share of requests, and the drift "
                               "the rollout tolerates. Immutable.")
        .def(py::init(&make_options), py::arg("enforce") = false, py::arg("rollout_percent") = 0.0,
             py::arg("drift_max_ratio") = 0.005)
        .def_readonly("enforce", &EnforceOptions::enforce)
        .def_readonly("rollout_percent", &EnforceOptions::rollout_percent)
        .def_readonly("drift_max_ratio", &EnforceOptions::drift_max_ratio)
        .def(
            "replace",
            [](const EnforceOptions& o, std::optional<bool> enforce,
               std::optional<double> rollout_percent, std::optional<double> drift_max_ratio) {
                return make_options(enforce.value_or(o.enforce),
                                    rollout_percent.value_or(o.rollout_percent),
                                    drift_max_ratio.value_or(o.drift_max_ratio));
            },
            py::kw_only(), py::arg("enforce") = py::none(), py::arg("rollout_percent") = py::none(),
            py::arg("drift_max_ratio") = py::none(), "A copy with the given fields changed.")
        .def("__eq__",
             [](const EnforceOptions& a, const EnforceOptions& b) {
                 return a.enforce == b.enforce && a.rollout_percent == b.rollout_percent &&
                        a.drift_max_ratio == b.drift_max_ratio;
             })
        .def("__repr__", [](const EnforceOptions& o) {
            return "EnforceOptions(enforce=" + std::string(o.enforce ? "True" : "False") +
                   ", rollout_percent=" +
                   py::repr(py::float_(o.rollout_percent)).cast<std::string>() +
                   ", drift_max_ratio=" +
                   py::repr(py::float_(o.drift_max_ratio)).cast<std::string>() + ")";
        });

    py::class_<VerdictPair> verdict_pair(m, "VerdictPair", "The two verdicts of one decision.");
    verdict_pair
        .def_property_readonly("shadow",
                               [](const VerdictPair& p) { return verdict_object(p.shadow); })
        .def_property_readonly("enforced",
                               [](const VerdictPair& p) { return verdict_object(p.enforced); })
        .def_readonly("in_rollout", &VerdictPair::in_rollout)
        .def_readonly("drift", &VerdictPair::drift)
        .def("__repr__", [](const VerdictPair& p) {
            return "VerdictPair(shadow=" + std::string(to_string(p.shadow)) +
                   ", enforced=" + std::string(to_string(p.enforced)) +
                   ", in_rollout=" + (p.in_rollout ? "True" : "False") +
                   ", drift=" + (p.drift ? "True" : "False") + ")";
        });
    verdict_pairs = new VerdictPairs();

    py::class_<Enforcer, std::shared_ptr<Enforcer>> enforcer_class(
        m, "Enforcer",
        "Puts a stable, hash-chosen share of keys in the enforced cohort and records every "
        "decision. Thread-safe; options change atomically.");
    def_fast<&decide_fast>(enforcer_class, "decide",
                           "decide(policy_id, key, shadow, enforced) -> VerdictPair\n\nDecides "
                           "one request: shadow and enforced are verdicts or zero-argument "
                           "callables.");
    enforcer_class
        .def(py::init([](EnforceOptions options, std::shared_ptr<DriftTracker> tracker,
                         std::shared_ptr<MetricsRegistry> registry, std::uint32_t seed) {
                 return std::make_shared<Enforcer>(options, std::move(tracker), std::move(registry),
                                                   seed);
             }),
             py::arg("options"), py::arg("tracker"), py::arg("registry") = py::none(),
             py::arg("seed") = 0)
        .def(
            "in_rollout",
            [](const Enforcer& enforcer, py::handle key, std::optional<std::string> policy_id) {
                const std::string_view key_text = text_arg(key, "key");
                return policy_id ? enforcer.in_rollout(key_text, *policy_id)
                                 : enforcer.in_rollout(key_text);
            },
            py::arg("key"), py::arg("policy_id") = py::none(),
            "Whether the key (str or UTF-8 bytes) is in the enforced cohort: of the policy's "
            "rollout share when one holds it, else the global one.")
        .def("rollout_percent_of", &Enforcer::rollout_percent_of, py::arg("policy_id"),
             "The percent the policy is enforced at now: its rollout share's, else the global "
             "rollout percent; 0 while enforce is off.")
        .def("share_policies", &Enforcer::share_policies, py::arg("rollout"),
             "The policies the share of `rollout` holds, or None when it holds none.")
        .def_property_readonly("options", &Enforcer::options)
        .def(
            "set_options",
            [](Enforcer& enforcer, std::optional<EnforceOptions> options,
               std::optional<bool> enforce, std::optional<double> rollout_percent,
               std::optional<double> drift_max_ratio) {
                if (options) {
                    enforce = enforce.value_or(options->enforce);
                    rollout_percent = rollout_percent.value_or(options->rollout_percent);
                    drift_max_ratio = drift_max_ratio.value_or(options->drift_max_ratio);
                }
                // One atomic step in the core: fields left out keep their value even when
                // another thread changes them meanwhile.
                enforcer.update_options(enforce, rollout_percent, drift_max_ratio);
            },
            py::arg("options") = py::none(), py::kw_only(), py::arg("enforce") = py::none(),
            py::arg("rollout_percent") = py::none(), py::arg("drift_max_ratio") = py::none(),
            "Replaces the options, whole or by field, atomically. While a RolloutManager drives "
            "this enforcer, its rollout_percent is the manager's: changing it is a ValueError.")
        .def(
            "error_counts",
            [](const Enforcer& enforcer, const std::string& window,
               std::optional<std::string> policy_id) {
                const WindowCounts counts = enforcer.error_counts(window, policy_id);
                return py::make_tuple(counts.events, counts.total);
            },
            py::arg("window") = "60m", py::arg("policy_id") = py::none(),
            "(failed enforced evaluations, enforced decisions) in a window.")
        .def(
            "lifetime_error_counts",
            [](const Enforcer& enforcer, std::optional<std::string> policy_id) {
                const WindowCounts counts = enforcer.lifetime_error_counts(policy_id);
                return py::make_tuple(counts.events, counts.total);
            },
            py::arg("policy_id") = py::none(),
            "(failed enforced evaluations, enforced decisions) since this enforcer was made.")
        .def_property_readonly("seed", &Enforcer::seed)
        .def_property_readonly("tracker", &Enforcer::tracker)
        .def_property_readonly("registry", &Enforcer::registry);

    m.def(
        "murmur3_x86_32",
        [](py::handle key, std::uint32_t seed) {
            return murmur3_x86_32(text_arg(key, "key"), seed);
        },
        py::arg("key"), py::arg("seed") = 0, "MurmurHash3_x86_32 of a str (UTF-8) or bytes.");
    m.def(
        "sampling_bucket",
        [](py::handle key, std::uint32_t seed) {
            return sampling_bucket(text_arg(key, "key"), seed);
        },
        py::arg("key"), py::arg("seed") = 0,
        "The key's bucket in [0, 10000): floor(murmur3_x86_32(key, seed) * 10000 / 2**32).");
    m.def(
        "cohort_seed",
        [](const std::string& rollout, std::uint32_t seed) {
            validate_rollout_name(rollout);
            return cohort_seed(rollout, seed);
        },
        py::arg("rollout"), py::arg("seed") = 0,
        "The seed of a rollout's own cohort: murmur3_x86_32(rollout, seed), or `seed` itself "
        "for the rollout named 'default'. A key is in it iff sampling_bucket(key, "
        "cohort_seed(rollout, seed)) is below the share's basis points.");
    m.def("validate_rollout_name", &validate_rollout_name, py::arg("rollout"),
          "ValueError unless the name is 1-64 characters of [A-Za-z0-9_.:-].");
    m.attr("DEFAULT_ROLLOUT") = std::string(kDefaultRollout);
}

}  // namespace driftgate::bindings
