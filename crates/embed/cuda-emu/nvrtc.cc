// An emulated NVRTC (libnvrtc.so) for tests on machines without a GPU: it
// compiles a CUDA source for the CPU with the host's C++ compiler, after
// kernel.h, into a shared object the emulated driver (driver.cc) loads. For
// each `extern "C" __global__ void name(params)` it adds
// `emu_entry_name(void** params)`, which unpacks cuLaunchKernel's parameter
// array and calls the kernel. Options (the architecture, ptxas') are
// ignored. The "cubin" it hands out is an EmuImageHeader and the object.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "emu.h"

#ifndef EMU_DIR
#error "build with -DEMU_DIR=<the directory of kernel.h>"
#endif
#ifndef EMU_CXX
#define EMU_CXX "c++"
#endif

typedef int nvrtcResult;
enum {
    NVRTC_SUCCESS = 0,
    NVRTC_ERROR_INVALID_INPUT = 3,
    NVRTC_ERROR_INVALID_PROGRAM = 4,
    NVRTC_ERROR_COMPILATION = 6,
};

struct Program {
    std::string source;
    std::string log;
    std::vector<char> image;
};
typedef Program* nvrtcProgram;

#define API extern "C" __attribute__((visibility("default")))

namespace {

std::string trim(const std::string& s) {
    size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
    return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// The type of a parameter declaration: all but its trailing name.
std::string param_type(const std::string& decl) {
    std::string d = trim(decl);
    size_t end = d.size();
    while (end > 0 && (isalnum((unsigned char)d[end - 1]) || d[end - 1] == '_')) end--;
    return trim(d.substr(0, end));
}

// emu_entry_<kernel> for every extern "C" __global__ kernel of `src`.
std::string entries(const std::string& src, std::string& error) {
    std::ostringstream out;
    const std::string marker = "__global__ void";
    for (size_t at = src.find(marker); at != std::string::npos; at = src.find(marker, at + 1)) {
        size_t open = src.find('(', at), close = src.find(')', open);
        if (open == std::string::npos || close == std::string::npos) {
            error = "a __global__ declaration without its parameter list";
            return "";
        }
        std::string name = trim(src.substr(at + marker.size(), open - at - marker.size()));
        std::string list = src.substr(open + 1, close - open - 1);
        out << "extern \"C\" void emu_entry_" << name << "(void** p) { " << name << "(";
        std::stringstream params(list);
        std::string decl;
        for (int i = 0; std::getline(params, decl, ','); ++i) {
            std::string type = param_type(decl);
            if (type.empty()) {
                error = "kernel " + name + ": cannot read parameter '" + trim(decl) + "'";
                return "";
            }
            out << (i ? ", " : "") << "*(" << type << "*)p[" << i << "]";
        }
        out << "); }\n";
    }
    return out.str();
}

bool read_file(const std::string& path, std::string& into) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return false;
    std::ostringstream s;
    s << f.rdbuf();
    into = s.str();
    return true;
}

}  // namespace

API nvrtcResult nvrtcVersion(int* major, int* minor) {
    *major = 13;
    *minor = 0;
    return NVRTC_SUCCESS;
}

API nvrtcResult nvrtcCreateProgram(nvrtcProgram* prog, const char* src, const char*, int num_headers,
                                   const char* const*, const char* const*) {
    if (!src || num_headers != 0) return NVRTC_ERROR_INVALID_INPUT;
    *prog = new Program{src, "", {}};
    return NVRTC_SUCCESS;
}

API nvrtcResult nvrtcDestroyProgram(nvrtcProgram* prog) {
    delete *prog;
    *prog = nullptr;
    return NVRTC_SUCCESS;
}

API nvrtcResult nvrtcCompileProgram(nvrtcProgram prog, int, const char* const*) {
    if (!prog) return NVRTC_ERROR_INVALID_PROGRAM;
    std::string error;
    std::string wrappers = entries(prog->source, error);
    if (!error.empty()) {
        prog->log = "cuda emulator: " + error;
        return NVRTC_ERROR_COMPILATION;
    }
    char dir[] = "/tmp/batchmill-cuda-emu-nvrtc-XXXXXX";
    if (!mkdtemp(dir)) return NVRTC_ERROR_COMPILATION;
    std::string d = dir, src = d + "/kernels.cc", so = d + "/kernels.so", log = d + "/log";
    {
        std::ofstream f(src);
        f << prog->source << "\n" << wrappers;
    }
    std::string cmd = std::string(EMU_CXX) + " -std=c++17 -O2 -march=native -fPIC -shared -w -I'" + EMU_DIR + "' -include kernel.h '" +
                      src + "' -o '" + so + "' >'" + log + "' 2>&1";
    int status = std::system(cmd.c_str());
    read_file(log, prog->log);
    std::string object;
    bool ok = status == 0 && read_file(so, object);
    unlink(src.c_str());
    unlink(so.c_str());
    unlink(log.c_str());
    rmdir(dir);
    if (!ok) {
        prog->log = "cuda emulator: " + cmd + "\n" + prog->log;
        return NVRTC_ERROR_COMPILATION;
    }
    EmuImageHeader h{};
    std::memcpy(h.magic, "BMEMUSO", 8);
    h.size = object.size();
    prog->image.assign((const char*)&h, (const char*)&h + sizeof h);
    prog->image.insert(prog->image.end(), object.begin(), object.end());
    return NVRTC_SUCCESS;
}

API nvrtcResult nvrtcGetProgramLogSize(nvrtcProgram prog, size_t* size) {
    *size = prog->log.size() + 1;
    return NVRTC_SUCCESS;
}

API nvrtcResult nvrtcGetProgramLog(nvrtcProgram prog, char* log) {
    std::memcpy(log, prog->log.c_str(), prog->log.size() + 1);
    return NVRTC_SUCCESS;
}

API nvrtcResult nvrtcGetCUBINSize(nvrtcProgram prog, size_t* size) {
    *size = prog->image.size();
    return NVRTC_SUCCESS;
}

API nvrtcResult nvrtcGetCUBIN(nvrtcProgram prog, char* cubin) {
    std::memcpy(cubin, prog->image.data(), prog->image.size());
    return NVRTC_SUCCESS;
}

API const char* nvrtcGetErrorString(nvrtcResult r) {
    switch (r) {
    case NVRTC_SUCCESS: return "NVRTC_SUCCESS";
    case NVRTC_ERROR_INVALID_INPUT: return "NVRTC_ERROR_INVALID_INPUT";
    case NVRTC_ERROR_INVALID_PROGRAM: return "NVRTC_ERROR_INVALID_PROGRAM";
    default: return "NVRTC_ERROR_COMPILATION";
    }
}
