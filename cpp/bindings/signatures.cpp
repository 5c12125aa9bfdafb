#include "bindings.hpp"
#include "driftgate/signature_lru.hpp"
#include "fast_method.hpp"

namespace driftgate::bindings {

namespace {

// The GIL stays held: the lock guards O(1) work, and a release would cost more than the wait.
py::object is_new_fast(py::handle self, PyObject* const* args, Py_ssize_t nargs,
                       PyObject* kwnames) {
    SignatureLRU& lru = self_as<SignatureLRU>(self);
    const auto [signature] = match_arguments<1>("is_new", {"signature"}, args, nargs, kwnames);
    return py::bool_(lru.is_new(text_arg(signature, "signature")));
}

}  // namespace

void register_signatures(py::module_& m) {
    py::class_<SignatureLRU, std::shared_ptr<SignatureLRU>> lru(
        m, "SignatureLRU",
        "Is this solution signature new among the `capacity` most recent ones? Thread-safe.");
    def_fast<&is_new_fast>(lru, "is_new",
                           "is_new(signature) -> bool\n\nTrue when the signature (str or bytes) "
                           "is not among the recent ones; marks it most recent either way.");
    lru.def(py::init([](long long capacity, std::shared_ptr<MetricsRegistry> registry) {
                return std::make_shared<SignatureLRU>(size_arg(capacity, "capacity"),
                                                      registry_or_default(std::move(registry)));
            }),
            py::arg("capacity") = 5000, py::arg("registry") = py::none())
        .def("__contains__",
             [](const SignatureLRU& lru, py::handle signature) {
                 return lru.contains(text_arg(signature, "signature"));
             })
        .def("__len__", &SignatureLRU::size)
        .def("clear", &SignatureLRU::clear)
        .def_property_readonly("capacity", &SignatureLRU::capacity);

    py::class_<DeterminismProbe, std::shared_ptr<DeterminismProbe>>(
        m, "DeterminismProbe",
        "Checks that the same input gives the same solution signature. Thread-safe.")
        .def(py::init([](long long capacity, std::shared_ptr<MetricsRegistry> registry) {
                 return std::make_shared<DeterminismProbe>(
                     size_arg(capacity, "capacity"), registry_or_default(std::move(registry)));
             }),
             py::arg("capacity") = 5000, py::arg("registry") = py::none())
        .def(
            "observe",
            [](DeterminismProbe& probe, py::handle input_fingerprint, py::handle signature) {
                return probe.observe(text_arg(input_fingerprint, "input_fingerprint"),
                                     text_arg(signature, "signature"));
            },
            py::arg("input_fingerprint"), py::arg("signature"),
            "False when the input was seen before with a different signature.")
        .def("__len__", &DeterminismProbe::size)
        .def("clear", &DeterminismProbe::clear)
        .def_property_readonly("capacity", &DeterminismProbe::capacity);
}

}  // namespace driftgate::bindings
