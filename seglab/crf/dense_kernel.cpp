// Dense CRF mean field (Kraehenbuehl, Koltun, NIPS 2011) on the permutohedral lattice (Adams,
// Baek, Davis, Eurographics 2010), fused into one C++ function. seglab/crf/native.py compiles
// it on first use with the system compiler (no torch headers) and calls it through ctypes;
// seglab/crf/dense.py is the PyTorch path it must agree with (same lattice, same base-2
// energies, same unary), and the fallback.
//
// What makes it faster than the PyTorch path and densecrf:
// - one pass over the pixels per iteration: slice both lattices, update Q (softmax), splat Q
//   for the next iteration while it is still in the cache, without data-dependent branches
//   (those mispredict on a textured image); the class dimension is contiguous and padded to
//   whole vectors (KP), the loops fixed-size (templated) so they vectorise;
// - both kernels' messages in that one pass; their weights and normalisations folded into the
//   per-pixel barycentric weights once;
// - a hash table of 64-bit vertex codes for the build, which reuses the previous pixel's
//   vertices when it falls into the same simplex (flat regions);
// - a lattice larger than the cache renumbered in the order of its codes, so that the blur
//   reads neighbours from a window that stays in the cache (sort_vertices);
// - float16 storage for the blur and slice of a lattice with more vertices than half the
//   pixels (a noisy image's), as dense.py's vertex_dtype; float32 arithmetic throughout;
// - threads: std::thread + std::barrier per call (futex waits after a short spin, so a busy
//   machine is not spun on); each thread's pixels splat into one shared buffer except at the
//   few vertices that two threads' pixels reach (per-thread side rows, summed before the
//   blur), so the result does not depend on scheduling;
// - large blocks are kept between calls (Pool) rather than faulted in afresh.
// SEGLAB_CRF_PROFILE=1 (CPU time) or =wall prints the time of each phase to stderr;
// SEGLAB_CRF_FLOAT32=1 turns the float16 storage off. A change is measured against the build
// before it with benchmarks/crf_ab.py (both timed alternately in one process).
#include <algorithm>
#include <atomic>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <numeric>
#include <thread>
#include <utility>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace {

constexpr float LOG2_E = 1.4426950408889634f;
constexpr float UNARY_CAP = 80.0f;          // as dense.py: no cost above 80 bits
constexpr float PROBABILITY_FLOOR = 1e-5f;  // as dense.py and pydensecrf's unary_from_softmax
constexpr float PAD_COST = 1e30f;           // padded classes: never the max, exp2 -> 0
constexpr int MAX_KP = 512;
constexpr uint64_t EMPTY = ~uint64_t(0);
// The pixel pass prefetches a lattice's rows only above this size: below it they mostly stay
// in the cache (2 MiB of L2 per core and a shared L3 here), and prefetching a 1-8 MiB lattice's rows cost more
// instructions than it saved (interleaved A/B on the benchmark's photos: 5-20 % of a pixel
// pass at one thread).
constexpr size_t PREFETCH_BYTES = size_t(1) << 23;
// float16 storage only for a lattice whose float32 rows are larger than this.
constexpr size_t HALF_STORAGE_BYTES = size_t(4) << 20;
constexpr double HALF_PRECISION_RATIO = 0.5;  // as dense.py's
// Vertices renumbered in code order (sort_vertices) for a lattice whose float32 rows are
// larger than this (twice the L2 cache of a core here).
constexpr size_t SORT_BYTES = size_t(4) << 20;

// Denormals slow every product ~100x on x86; tiny probabilities must not produce them.
struct FlushDenormals {
#if defined(__x86_64__) || defined(__i386__)
    unsigned saved = _mm_getcsr();
    FlushDenormals() { _mm_setcsr(saved | 0x8040); }
    ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

inline float bits_to_float(int32_t i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int32_t float_to_bits(float f) {
    int32_t i;
    std::memcpy(&i, &f, 4);
    return i;
}

// 2^f for |f| <= 1/2 by its Taylor series to degree 6 (relative error ~1e-7), for a float or
// a vector of them.
template <class T> inline T exp2_fraction(T f) {
    T p = f * 1.5403530393381609e-4f + 1.3333558146428443e-3f;
    p = p * f + 9.6181291076284772e-3f;
    p = p * f + 5.5504108664821580e-2f;
    p = p * f + 2.4022650695910071e-1f;
    p = p * f + 6.9314718055994531e-1f;
    return p * f + 1.0f;
}

// 2^x for x <= 0 (clamped at -126, the smallest normal): x = n + f, n whole, |f| <= 1/2.
// Branch-free, so the loops vectorise.
inline float exp2_neg(float x) {
    x = x < -126.0f ? -126.0f : x;
    const float n = std::nearbyint(x);
    return exp2_fraction(x - n) * bits_to_float((static_cast<int32_t>(n) + 127) << 23);
}

// log2(x) for normal x > 0: x = m 2^e with m in [sqrt(1/2), sqrt(2)), log m by the atanh
// series in t = (m - 1) / (m + 1), |t| < 0.172, to t^9 (error ~3e-10).
inline float log2_pos(float x) {
    int32_t bits = float_to_bits(x);
    int32_t e = ((bits >> 23) & 0xff) - 127;
    float m = bits_to_float((bits & 0x007fffff) | 0x3f800000);  // [1, 2)
    const bool high = m > 1.41421356f;
    m = high ? 0.5f * m : m;
    e += high ? 1 : 0;
    const float t = (m - 1.0f) / (m + 1.0f);
    const float t2 = t * t;
    float s = 1.0f / 9.0f;
    s = s * t2 + 1.0f / 7.0f;
    s = s * t2 + 1.0f / 5.0f;
    s = s * t2 + 1.0f / 3.0f;
    s = s * t2 + 1.0f;
    return static_cast<float>(e) + 2.0f * LOG2_E * t * s;
}

// SEGLAB_CRF_PROFILE=1 prints each phase's CPU time on thread 0 to stderr.
inline double thread_ms() {
    static const bool wall = std::getenv("SEGLAB_CRF_PROFILE") && std::getenv("SEGLAB_CRF_PROFILE")[0] == 'w';
    timespec now;
    clock_gettime(wall ? CLOCK_MONOTONIC : CLOCK_THREAD_CPUTIME_ID, &now);
    return now.tv_sec * 1e3 + now.tv_nsec * 1e-6;
}
struct Clock {
    bool on = std::getenv("SEGLAB_CRF_PROFILE") != nullptr;
    double last = thread_ms();
    void lap(const char* what) {
        if (!on) return;
        const double now = thread_ms();
        std::fprintf(stderr, "  %-14s %8.2f ms\n", what, now - last);
        last = now;
    }
};

inline std::pair<int64_t, int64_t> share(int64_t n, int t, int T) {
    return {n * t / T, n * (t + 1) / T};
}

// Runs body(t) on T threads (t = 0 here); exceptions are caught per thread and reported.
template <class Body>
bool run_threads(int T, Body&& body) {
    std::vector<char> failed(T, 0);
    auto guarded = [&](int t) {
        FlushDenormals flush;
        try {
            body(t);
        } catch (...) {
            failed[t] = 1;
        }
    };
    std::vector<std::thread> pool;
    try {
        for (int t = 1; t < T; ++t) pool.emplace_back(guarded, t);
    } catch (...) {
        for (auto& thread : pool) thread.join();
        return false;
    }
    guarded(0);
    for (auto& thread : pool) thread.join();
    return std::find(failed.begin(), failed.end(), 1) == failed.end();
}

// Open addressing with linear probing on 64-bit codes; values are vertex numbers in the order
// of first insertion (pixel order, which keeps splat and slice accesses local).
struct HashTable {
    struct Slot {
        uint64_t key;
        int32_t value;
    };
    std::vector<Slot> slots;      // key and value side by side: one cache miss per probe
    std::vector<uint64_t> codes;  // codes[v]: the code of vertex v
    int shift = 0;
    uint64_t mask = 0;

    void reset(int64_t expected) {
        int bits = 10;
        while ((int64_t(1) << bits) < 2 * expected) ++bits;
        codes.clear();
        codes.reserve(expected);
        resize(bits);
    }
    void resize(int bits) {
        shift = 64 - bits;
        mask = (uint64_t(1) << bits) - 1;
        slots.assign(mask + 1, Slot{EMPTY, -1});
        for (size_t v = 0; v < codes.size(); ++v) {
            uint64_t i = slot(codes[v]);
            while (slots[i].key != EMPTY) i = (i + 1) & mask;
            slots[i] = Slot{codes[v], int32_t(v)};
        }
    }
    uint64_t slot(uint64_t code) const { return (code * 0x9E3779B97F4A7C15ull) >> shift; }
    int32_t insert(uint64_t code) {
        uint64_t i = slot(code);
        while (true) {
            if (slots[i].key == code) return slots[i].value;
            if (slots[i].key == EMPTY) break;
            i = (i + 1) & mask;
        }
        const int32_t v = int32_t(codes.size());
        slots[i] = Slot{code, v};
        codes.push_back(code);
        if (2 * codes.size() > mask + 1) resize(64 - shift + 1);
        return v;
    }
    int32_t find(uint64_t code) const {
        uint64_t i = slot(code);
        while (true) {
            if (slots[i].key == code) return slots[i].value;
            if (slots[i].key == EMPTY) return -1;
            i = (i + 1) & mask;
        }
    }
};

// Large blocks freed by one call, kept (up to POOL_BYTES) for the next: a fresh block's pages
// are faulted in and zeroed by the system on first touch, which cost ~8 % of a call on a
// 640x427 photo. Blocks are 2 MiB-aligned and advised as transparent huge pages.
constexpr size_t HUGE_PAGE = size_t(1) << 21;
constexpr size_t POOL_BYTES = size_t(256) << 20;
struct Pool {
    std::mutex lock;
    std::vector<std::pair<size_t, void*>> blocks;  // (bytes, block), oldest first
    size_t held = 0;
    ~Pool() {
        for (auto& block : blocks) std::free(block.second);
    }
    // A block of at least `bytes` (at most 4 times as many), whose size it writes back.
    void* take(size_t& bytes) {
        std::lock_guard<std::mutex> guard(lock);
        size_t best = blocks.size();
        for (size_t i = 0; i < blocks.size(); ++i)
            if (blocks[i].first >= bytes && blocks[i].first <= 4 * bytes &&
                (best == blocks.size() || blocks[i].first < blocks[best].first))
                best = i;
        if (best == blocks.size()) return nullptr;
        void* block = blocks[best].second;
        bytes = blocks[best].first;
        held -= bytes;
        blocks.erase(blocks.begin() + best);
        return block;
    }
    void give(void* block, size_t bytes) {
        std::lock_guard<std::mutex> guard(lock);
        blocks.emplace_back(bytes, block);
        held += bytes;
        while (held > POOL_BYTES) {
            std::free(blocks.front().second);
            held -= blocks.front().first;
            blocks.erase(blocks.begin());
        }
    }
};
Pool& pool() {
    static Pool the_pool;
    return the_pool;
}

// A large array, uninitialised unless resize_zeroed (see Pool for where its memory comes from).
template <class T>
struct Array {
    T* data = nullptr;
    size_t size = 0;
    size_t bytes = 0;  // of the block: a multiple of HUGE_PAGE for a pooled one, else 0
    Array() = default;
    explicit Array(size_t n) { resize(n); }
    Array(const Array&) = delete;
    Array& operator=(const Array&) = delete;
    Array(Array&& other) noexcept : data(other.data), size(other.size), bytes(other.bytes) {
        other.data = nullptr;
    }
    Array& operator=(Array&& other) noexcept {
        std::swap(data, other.data);
        std::swap(size, other.size);
        std::swap(bytes, other.bytes);
        return *this;
    }
    ~Array() { release(); }
    void release() {
        if (data && bytes) {
            pool().give(data, bytes);
        } else {
            std::free(data);
        }
        data = nullptr;
    }
    void resize(size_t n) {
        release();
        size = n;
        const size_t wanted = std::max<size_t>(n * sizeof(T), 64);
        if (wanted < HUGE_PAGE / 4) {  // small: the ordinary heap
            bytes = 0;
            data = static_cast<T*>(std::aligned_alloc(64, (wanted + 63) / 64 * 64));
        } else {
            bytes = (wanted + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
            data = static_cast<T*>(pool().take(bytes));
            if (!data) {
                data = static_cast<T*>(std::aligned_alloc(HUGE_PAGE, bytes));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
                if (data) madvise(data, bytes, MADV_HUGEPAGE);
#endif
            }
        }
        if (!data) throw std::bad_alloc();
    }
    void zero() { std::memset(data, 0, size * sizeof(T)); }
    void resize_zeroed(size_t n) {
        resize(n);
        zero();
    }
    T& operator[](size_t i) { return data[i]; }
    const T& operator[](size_t i) const { return data[i]; }
};

// One Gaussian kernel's lattice over the N pixels.
struct Lattice {
    int d = 0, d1 = 0;
    float feature_scale[5] = {};  // 1 / theta of each feature (x, y[, r, g, b])
    float constant = 0;           // weight * alpha * log2 e: the slice's base-2 scale
    int64_t M = 0;                // vertices; row M of every vertex buffer is zero
    Array<int32_t> rem0;          // (N, d1) build scratch
    Array<int8_t> rank;           // (N, d1) build scratch
    Array<int32_t> offset;        // (N, d1) vertex of each corner
    Array<float> weight;          // (N, d1) barycentric weight, times D^-1/2 after normalise
    // The row the splat adds into: the vertex, or for shared vertex s (one that pixels of two
    // threads' ranges splat to) side row M + 1 + t S + s of the pixel's thread t, below the
    // vertex rows of the same buffer (summed into the vertex's row before the blur; every other
    // vertex is one thread's alone, so all threads splat into one buffer, without a branch).
    Array<int32_t> splat_offset;  // (N, d1)
    std::vector<int32_t> shared;  // (S) the shared vertices
    std::vector<int32_t> shared_id;  // (M) each vertex's index in shared, or -1
    std::vector<int32_t> n1, n2;  // (d1, M) neighbours along each direction (M: none)
    std::vector<int64_t> low;     // code layout: per-coordinate minimum minus a margin
    std::vector<uint64_t> stride;
    std::vector<int32_t> min_rem0, max_rem0;  // (T, d) per-thread ranges of rem0
    HashTable table;                          // code -> vertex, during the build
    bool sorted = false;                      // vertices renumbered in code order
};

// GCC/Clang vector extensions, lowered to the machine's SIMD: the class dimension's vectors in
// the pixel pass, and 8 pixels at a time in embed_block.
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

// Lane-wise ceil or floor (ROUND_UP, ROUND_DOWN) by vroundps, the rounding of std::ceil and
// std::floor. Templates, so without AVX nothing is instantiated.
#if defined(__AVX__)
constexpr bool VECTOR_EMBED = true;
constexpr int ROUND_UP = _MM_FROUND_CEIL, ROUND_DOWN = _MM_FROUND_FLOOR;
template <int MODE> inline v8f round_v(v8f v) {
    __m256 x;
    std::memcpy(&x, &v, sizeof v);
    x = _mm256_round_ps(x, MODE);
    std::memcpy(&v, &x, sizeof v);
    return v;
}
#else
constexpr bool VECTOR_EMBED = false;  // embed takes the scalar path
constexpr int ROUND_UP = 0, ROUND_DOWN = 1;
template <int MODE> inline v8f round_v(v8f v) { return v; }
#endif

// embed's arithmetic for 8 pixels at once, one pixel per lane (the scalar loop spent ~115 ns
// a pixel at d = 5 on branchy scalar code). Every lane runs the scalar code's float
// operations in the same order: the rank's branches become selects by comparison masks (-1
// or 0), and bary's scattered additions one masked addition per position (each position
// gets one += and one -=, exact in either order from 0). The two agree bit for bit under
// -ffp-contract=off; with the default contraction the compiler fuses different products in
// each (Q differs by < 1e-5). scaled: (D) features of the 8 pixels; writes rows p..p + 7.
template <int D>
inline void embed_block(Lattice& L, const v8f* scaled, int64_t p, v8i* lo, v8i* hi) {
    constexpr int D1 = D + 1;
    v8f elevated[D1];
    v8f sm = {};
    for (int j = D; j > 0; --j) {
        const v8f cf = scaled[j - 1];
        elevated[j] = sm - float(j) * cf;
        sm += cf;
    }
    elevated[0] = sm;
    v8i rem0[D1];
    v8f rem0_f[D1];
    v8i sum = {};
    for (int i = 0; i < D1; ++i) {
        const v8f v = elevated[i] * (1.0f / D1);
        const v8f up_k = round_v<ROUND_UP>(v), down_k = round_v<ROUND_DOWN>(v);
        const v8f up = up_k * float(D1), down = down_k * float(D1);
        const v8i nearer_up = up - elevated[i] < elevated[i] - down;
        rem0[i] = nearer_up ? __builtin_convertvector(up, v8i) : __builtin_convertvector(down, v8i);
        sum += nearer_up ? __builtin_convertvector(up_k, v8i) : __builtin_convertvector(down_k, v8i);
    }
    for (int i = 0; i < D1; ++i) rem0_f[i] = __builtin_convertvector(rem0[i], v8f);
    v8i rank[D1] = {};
    for (int i = 0; i < D; ++i) {
        const v8f di = elevated[i] - rem0_f[i];
        for (int j = i + 1; j < D1; ++j) {
            const v8i j_first = di < elevated[j] - rem0_f[j];  // -1 where true
            rank[i] -= j_first;
            rank[j] += 1 + j_first;
        }
    }
    for (int i = 0; i < D1; ++i) {
        rank[i] += sum;
        const v8i step = ((rank[i] < 0) & D1) - ((rank[i] > D) & D1);
        rank[i] += step;
        rem0[i] += step;
    }
    v8f bary[D1 + 1] = {};
    for (int i = 0; i < D1; ++i) {
        const v8f v = (elevated[i] - __builtin_convertvector(rem0[i], v8f)) * (1.0f / D1);
        const v8i at = D - rank[i];
        for (int k = 0; k < D1; ++k) {
            const v8f here = at == k ? v : v8f{};
            bary[k] += here;
            bary[k + 1] -= here;
        }
    }
    bary[0] += 1.0f + bary[D1];
    for (int k = 0; k < 8; ++k)
        for (int i = 0; i < D1; ++i) {
            L.rem0[(p + k) * D1 + i] = rem0[i][k];
            L.rank[(p + k) * D1 + i] = int8_t(rank[i][k]);
            L.weight[(p + k) * D1 + i] = bary[i][k];
        }
    for (int i = 0; i < D; ++i) {
        lo[i] = rem0[i] < lo[i] ? rem0[i] : lo[i];
        hi[i] = rem0[i] > hi[i] ? rem0[i] : hi[i];
    }
}

// Elevation, enclosing simplex, barycentric weights of pixels p0..p1 (densecrf's
// Permutohedral::init, written as dense.py's lattice.py computes it).
template <int D>
void embed(Lattice& L, const uint8_t* image, int64_t N, int width, int64_t p0, int64_t p1, int t) {
    constexpr int D1 = D + 1;
    const float inv_std_dev = std::sqrt(2.0 / 3.0) * D1;
    float scale[D];
    for (int i = 0; i < D; ++i) scale[i] = float(inv_std_dev / std::sqrt(double((i + 1) * (i + 2))));
    // Local ranges, stored once at the end: the threads' slots share a cache line.
    int32_t lo[D], hi[D];
    for (int i = 0; i < D; ++i) lo[i] = INT32_MAX, hi[i] = INT32_MIN;
    // Every scaled feature (value / theta) * scale takes one of few values (a column, a row,
    // a colour level): tables of them, computed by the same float operations, replace a
    // division per feature and pixel.
    const int64_t height = (p1 + width - 1) / width;
    std::vector<float> column(width), row(height), level(D > 2 ? 256 * (D - 2) : 0);
    for (int64_t i = 0; i < width; ++i) column[i] = (float(i) / L.feature_scale[0]) * scale[0];
    for (int64_t i = 0; i < height; ++i) row[i] = (float(i) / L.feature_scale[1]) * scale[1];
    for (int c = 2; c < D; ++c)
        for (int v = 0; v < 256; ++v)
            level[(c - 2) * 256 + v] = (float(v) / L.feature_scale[c]) * scale[c];
    int64_t x = p0 % width, y = p0 / width;
    int64_t p = p0;
    if constexpr (VECTOR_EMBED) {  // blocks of 8 pixels; the rest by the scalar loop below
        v8i block_lo[D], block_hi[D];
        for (int i = 0; i < D; ++i)
            for (int k = 0; k < 8; ++k) block_lo[i][k] = INT32_MAX, block_hi[i][k] = INT32_MIN;
        for (; p + 8 <= p1; p += 8) {
            v8f scaled[D] = {};  // filled lane by lane
            for (int k = 0; k < 8; ++k, ++x) {
                if (x == width) x = 0, ++y;
                scaled[0][k] = column[x];
                scaled[1][k] = row[y];
                for (int c = 2; c < D; ++c) scaled[c][k] = level[(c - 2) * 256 + image[(c - 2) * N + p + k]];
            }
            embed_block<D>(L, scaled, p, block_lo, block_hi);
        }
        for (int i = 0; i < D; ++i)
            for (int k = 0; k < 8; ++k)
                lo[i] = std::min(lo[i], block_lo[i][k]), hi[i] = std::max(hi[i], block_hi[i][k]);
    }
    for (; p < p1; ++p, ++x) {
        if (x == width) x = 0, ++y;
        float scaled[D];
        scaled[0] = column[x];
        scaled[1] = row[y];
        for (int c = 2; c < D; ++c) scaled[c] = level[(c - 2) * 256 + image[(c - 2) * N + p]];
        float elevated[D1];
        float sm = 0;
        for (int j = D; j > 0; --j) {
            const float cf = scaled[j - 1];
            elevated[j] = sm - j * cf;
            sm += cf;
        }
        elevated[0] = sm;
        int rem0[D1];
        int sum = 0;
        for (int i = 0; i < D1; ++i) {
            const float v = elevated[i] * (1.0f / D1);
            const float up = std::ceil(v) * D1, down = std::floor(v) * D1;
            rem0[i] = int(up - elevated[i] < elevated[i] - down ? up : down);
            sum += rem0[i] / D1;
        }
        int rank[D1] = {};
        for (int i = 0; i < D; ++i) {
            const float di = elevated[i] - rem0[i];
            for (int j = i + 1; j < D1; ++j) {  // branch-free: the outcomes are random
                const int j_first = di < elevated[j] - rem0[j];
                rank[i] += j_first;
                rank[j] += 1 - j_first;
            }
        }
        for (int i = 0; i < D1; ++i) {
            rank[i] += sum;
            if (rank[i] < 0) {
                rank[i] += D1;
                rem0[i] += D1;
            } else if (rank[i] > D) {
                rank[i] -= D1;
                rem0[i] -= D1;
            }
        }
        float bary[D1 + 1] = {};
        for (int i = 0; i < D1; ++i) {
            const float v = (elevated[i] - rem0[i]) * (1.0f / D1);
            bary[D - rank[i]] += v;
            bary[D - rank[i] + 1] -= v;
        }
        bary[0] += 1.0f + bary[D1];
        for (int i = 0; i < D1; ++i) {
            L.rem0[p * D1 + i] = rem0[i];
            L.rank[p * D1 + i] = int8_t(rank[i]);
            L.weight[p * D1 + i] = bary[i];
        }
        for (int i = 0; i < D; ++i) lo[i] = std::min(lo[i], rem0[i]), hi[i] = std::max(hi[i], rem0[i]);
    }
    for (int i = 0; i < D; ++i) L.min_rem0[size_t(t) * D + i] = lo[i], L.max_rem0[size_t(t) * D + i] = hi[i];
}

// The mixed-radix code layout: a margin of 2 d1 on every coordinate covers the corners and the
// +-d steps to neighbours, so a neighbour's code never aliases another vertex. False: too large.
bool layout(Lattice& L, int T) {
    const int d = L.d;
    L.low.assign(d, 0);
    L.stride.assign(L.d1, 0);  // stride[d] = 0: the last coordinate is implied by sum = 0
    std::vector<int64_t> span(d);
    double total = 1;
    for (int i = 0; i < d; ++i) {
        int64_t lo = INT32_MAX, hi = INT32_MIN;
        for (int t = 0; t < T; ++t) {
            lo = std::min<int64_t>(lo, L.min_rem0[t * d + i]);
            hi = std::max<int64_t>(hi, L.max_rem0[t * d + i]);
        }
        L.low[i] = lo - 2 * L.d1;
        span[i] = hi - L.low[i] + 2 * L.d1 + 1;
        total *= double(span[i]);
    }
    if (total >= 9.0e18) return false;
    L.stride[d - 1] = 1;
    for (int i = d - 2; i >= 0; --i) L.stride[i] = L.stride[i + 1] * uint64_t(span[i + 1]);
    return true;
}

// Vertex numbers of every pixel's corners; a pixel in the previous pixel's simplex reuses them.
// D fixed, so the comparisons and loops unroll (memcmp calls cost ~25 % of the build here).
template <int D>
void insert_vertices(Lattice& L, int64_t N) {
    constexpr int d = D, d1 = D + 1;
    HashTable& table = L.table;
    // Sized for a photo's few vertices (it doubles as it fills): a table for N / 2 (8 MiB at
    // 640x427) is larger than the L2 cache, and nearly every probe of it missed there; a
    // noisy image's many vertices cost a few rehashes instead. Vertex numbers are the order of
    // first insertion whatever the size, so the result is the same.
    table.reset(std::max<int64_t>(4096, N / 64));
    uint64_t sum_stride = 0;
    for (int i = 0; i < d; ++i) sum_stride += L.stride[i];
    uint64_t by_rank[8];
    for (int64_t p = 0; p < N; ++p) {
        const int32_t* rem0 = &L.rem0[p * d1];
        const int8_t* rank = &L.rank[p * d1];
        const bool same = p > 0 && std::memcmp(rem0, rem0 - d1, 4 * d1) == 0 &&
                          std::memcmp(rank, rank - d1, d1) == 0;
        if (same) {
            std::memcpy(&L.offset[p * d1], &L.offset[(p - 1) * d1], 4 * d1);
            continue;
        }
        // Vertex r is rem0 + r - d1 [rank > d - r] in each coordinate; vertex r + 1 is vertex r
        // plus 1 everywhere, minus d1 in the coordinate of rank d - r.
        uint64_t code = 0;
        for (int i = 0; i < d1; ++i) by_rank[rank[i]] = L.stride[i];
        for (int i = 0; i < d; ++i) code += uint64_t(rem0[i] - L.low[i]) * L.stride[i];
        for (int r = 0; r < d1; ++r) {
            if (r > 0) code += sum_stride - d1 * by_rank[d - r + 1];
            L.offset[p * d1 + r] = table.insert(code);
        }
    }
    L.M = int64_t(table.codes.size());
    L.n1.assign(size_t(d1) * L.M, int32_t(L.M));
    L.n2.assign(size_t(d1) * L.M, int32_t(L.M));
    L.rem0.resize(0);
    L.rank.resize(0);
}

// A lattice larger than the cache (a noisy image's: more vertices than pixels) is renumbered
// in the order of its codes, coordinate 0 most significant. A vertex's neighbour along any
// direction differs from it by at most d in coordinate 0, so in code order the blur's reads
// of neighbours fall in a window of a few values of coordinate 0 that moves through the
// buffer with it and stays in the cache (in pixel order they fall anywhere in a buffer several
// times the cache), and the neighbours are found by merging sorted codes instead of hash
// look-ups. Every sum still adds the same terms in the same order: the result is unchanged.
void sort_vertices(Lattice& L, int64_t N) {
    const int64_t M = L.M;
    std::vector<uint64_t>& codes = L.table.codes;
    uint64_t any = 1;
    for (const uint64_t code : codes) any |= code;
    const int bits = 64 - __builtin_clzll(any);
    // Least significant digit first radix sort of (code, vertex), 11 bits a pass.
    constexpr int DIGIT = 11;
    std::vector<uint64_t> spare_codes(M);
    std::vector<int32_t> order(M), spare_order(M);
    std::iota(order.begin(), order.end(), 0);
    std::vector<int64_t> start((1 << DIGIT) + 1);
    for (int shift = 0; shift < bits; shift += DIGIT) {
        std::fill(start.begin(), start.end(), 0);
        const uint64_t mask = (uint64_t(1) << DIGIT) - 1;
        for (int64_t v = 0; v < M; ++v) ++start[((codes[v] >> shift) & mask) + 1];
        for (size_t i = 1; i < start.size(); ++i) start[i] += start[i - 1];
        for (int64_t v = 0; v < M; ++v) {
            const int64_t at = start[(codes[v] >> shift) & mask]++;
            spare_codes[at] = codes[v];
            spare_order[at] = order[v];
        }
        codes.swap(spare_codes);
        order.swap(spare_order);
    }
    std::vector<int32_t> renumbered(M);
    for (int64_t v = 0; v < M; ++v) renumbered[order[v]] = int32_t(v);
    for (int64_t i = 0; i < N * L.d1; ++i) L.offset[i] = renumbered[L.offset[i]];
    HashTable().slots.swap(L.table.slots);  // sorted codes replace the table
    L.sorted = true;
}

// Neighbours of vertices v0..v1 (read-only look-ups, so threads split the vertices): along
// direction j, key - 1 everywhere except key[j] + d (n1), and the mirror (n2); the code is
// linear in the key, so n1 is one constant offset, and a is b's n2 exactly when b is a's n1.
// Sorted codes plus a constant stay sorted: one merge per direction finds them.
void find_neighbours(Lattice& L, int64_t v0, int64_t v1) {
    uint64_t sum_stride = 0;
    for (int i = 0; i < L.d; ++i) sum_stride += L.stride[i];
    const HashTable& table = L.table;
    const std::vector<uint64_t>& codes = table.codes;
    for (int j = 0; j < L.d1; ++j) {
        const uint64_t delta = L.d1 * L.stride[j] - sum_stride;
        int32_t* n1 = &L.n1[size_t(j) * L.M];
        int32_t* n2 = &L.n2[size_t(j) * L.M];
        if (L.sorted) {
            if (v0 >= v1) continue;
            int64_t k = std::lower_bound(codes.begin(), codes.end(), codes[v0] + delta) - codes.begin();
            for (int64_t v = v0; v < v1; ++v) {
                const uint64_t wanted = codes[v] + delta;
                while (k < L.M && codes[k] < wanted) ++k;
                if (k < L.M && codes[k] == wanted) {
                    n1[v] = int32_t(k);
                    n2[k] = int32_t(v);
                }
            }
            continue;
        }
        for (int64_t v = v0; v < v1; ++v) {
            const int32_t found = table.find(codes[v] + delta);
            if (found >= 0) {
                n1[v] = found;
                n2[found] = int32_t(v);
            }
        }
    }
}

// D^-1/2 with D = F 1 (densecrf's NORMALIZE_SYMMETRIC), folded into the barycentric weights.
template <int D1>
void normalise(Lattice& L, int64_t N) {
    constexpr int d1 = D1;
    std::vector<float> a(L.M + 1, 0.0f), b(L.M + 1, 0.0f);
    for (int64_t i = 0; i < N * d1; ++i) a[L.offset[i]] += L.weight[i];
    for (int j = 0; j < d1; ++j) {
        const int32_t* n1 = &L.n1[size_t(j) * L.M];
        const int32_t* n2 = &L.n2[size_t(j) * L.M];
        for (int64_t v = 0; v < L.M; ++v) b[v] = a[v] + 0.5f * (a[n1[v]] + a[n2[v]]);
        std::swap(a, b);
    }
    const float alpha = 1.0f / (1.0f + std::pow(2.0f, -float(L.d)));
    for (int64_t p = 0; p < N; ++p) {
        float total = 0;
        for (int r = 0; r < d1; ++r) total += L.weight[p * d1 + r] * a[L.offset[p * d1 + r]];
        const float norm = 1.0f / std::sqrt(alpha * total + 1e-20f);
        for (int r = 0; r < d1; ++r) L.weight[p * d1 + r] *= norm;
    }
}

struct Job {
    int64_t N = 0;
    int K = 0, KP = 0, T = 1, iterations = 0;
    std::vector<Lattice*> lattices;
    Array<float> unary;        // (N, KP) base-2 costs, each row's minimum 0, pads PAD_COST
    Array<float> q0;           // (N, KP) the starting Q
    // Pixel i of the passes is image pixel pixel_of[i] (reorder_pixels), or i when it is empty.
    std::vector<int32_t> pixel_of;
    std::vector<float> mask;   // (KP): 1 for a class, 0 for a pad
    std::vector<float> compatibility_rows;  // (K, KP): the (K, K) base-2 cost, padded
    const float* compatibility = nullptr;  // its data, or null (Potts)
    float* out = nullptr;                  // (N, K), or null
    int64_t* labels = nullptr;             // (N) each pixel's most probable class, or null
    // Per lattice: two vertex buffers (M + 1 + T S, KP) with row M zero and each thread's S
    // side rows after it, and the scratch buffer of the blur. An iteration's pixel pass
    // splats into buffer s (shared vertices into its thread's side rows, added in before the
    // blur), which is blurred (with the scratch) and sliced by the next pass while it splats
    // into buffer 1 - s.
    std::vector<Array<float>> sets[2];
    std::vector<Array<float>> scratch;
    // A lattice much larger than the cache (a noisy image's: more vertices than pixels) is
    // blurred and sliced in float16 storage (float32 arithmetic; the splat stays float32):
    // half the memory traffic of the passes that dominate there, as dense.py's vertex_dtype.
    bool half[2] = {};
    std::vector<Array<uint16_t>> half_rows[2];  // [step parity][lattice] (M + 1, KP)
};

// The unary of dense.py's _unary_rows, from scores (K, N), and the starting Q, for pixels
// p0..p1, a block at a time: per class, the block's pixels are contiguous in scores, so the
// arithmetic runs along pixels (vectorised); the block is then transposed into rows.
void prepare_unary(Job& job, const float* scores, bool logits, int64_t p0, int64_t p1) {
    constexpr int B = 64;
    const int K = job.K, KP = job.KP;
    const int64_t N = job.N;
    alignas(64) float best[B], total[B], u[B], q[B];
    for (int64_t b0 = p0; b0 < p1; b0 += B) {
        const int n = int(std::min<int64_t>(B, p1 - b0));
        for (int i = 0; i < n; ++i) best[i] = scores[b0 + i], total[i] = 0.0f;
        for (int k = 1; k < K; ++k)
            for (int i = 0; i < n; ++i) best[i] = std::max(best[i], scores[k * N + b0 + i]);
        if (!logits)
            for (int i = 0; i < n; ++i) best[i] = std::clamp(best[i], PROBABILITY_FLOOR, 1.0f);
        for (int k = 0; k < K; ++k) {
            const float* s = scores + k * N + b0;
            if (logits) {
                for (int i = 0; i < n; ++i) {
                    u[i] = std::min((best[i] - s[i]) * LOG2_E, UNARY_CAP);
                    q[i] = exp2_neg(-u[i]);
                }
            } else {
                for (int i = 0; i < n; ++i) {
                    q[i] = std::clamp(s[i], PROBABILITY_FLOOR, 1.0f) / best[i];
                    u[i] = -log2_pos(q[i]);
                }
            }
            for (int i = 0; i < n; ++i) {
                total[i] += q[i];
                job.unary[(b0 + i) * KP + k] = u[i];
                job.q0[(b0 + i) * KP + k] = q[i];
            }
        }
        for (int i = 0; i < n; ++i) {
            float* row_u = &job.unary[(b0 + i) * KP];
            float* row_q = &job.q0[(b0 + i) * KP];
            const float scale = 1.0f / total[i];
            for (int k = 0; k < K; ++k) row_q[k] *= scale;
            for (int k = K; k < KP; ++k) row_u[k] = PAD_COST, row_q[k] = 0.0f;
        }
    }
}

// Vectors of the class dimension (v8f and the rest, above): 8 lanes when KP is a multiple of
// 8, else 4. KPT = 0 is the generic, runtime-KP version.
template <int W> struct VectorOf;
template <> struct VectorOf<8> { using F = v8f; using I = v8i; };
template <> struct VectorOf<4> { using F = v4f; using I = v4i; };
template <int KPT> constexpr int lanes = KPT > 0 && KPT % 8 == 0 ? 8 : 4;

template <class V> inline V load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
template <class V> inline void store(float* p, V v) { std::memcpy(p, &v, sizeof v); }
// x in every lane (not V{} + x, which the compiler must keep as an addition: -0 + 0 = +0).
template <class V> inline V splat_value(float x) {
    if constexpr (sizeof(V) == 32)
        return V{x, x, x, x, x, x, x, x};
    else
        return V{x, x, x, x};
}

// Rows stored as float16 (F16C conversions; without F16C no lattice is stored so).
#if defined(__F16C__)
constexpr bool HALF_STORAGE = true;
#else
constexpr bool HALF_STORAGE = false;
#endif
template <class V> inline V load_row(const float* p) { return load<V>(p); }
template <class V> inline void store_row(float* p, V v) { store(p, v); }
template <class V> inline V load_row(const uint16_t* p) {
    V v{};
#if defined(__F16C__)
    if constexpr (sizeof(V) == 32) {
        const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        std::memcpy(&v, &x, sizeof v);
    } else {
        const __m128 x = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
        std::memcpy(&v, &x, sizeof v);
    }
#else
    (void)p;
#endif
    return v;
}
template <class V> inline void store_row(uint16_t* p, V v) {
#if defined(__F16C__)
    if constexpr (sizeof(V) == 32) {
        __m256 x;
        std::memcpy(&x, &v, sizeof v);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
    } else {
        __m128 x;
        std::memcpy(&x, &v, sizeof v);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
    }
#else
    (void)p, (void)v;
#endif
}

// The index of a row's largest of K values, the first of equal ones (as torch.argmax).
inline int64_t first_largest(const float* row, int K) {
    int64_t best = 0;
    for (int k = 1; k < K; ++k) best = row[k] > row[best] ? k : best;
    return best;
}

// The maximum and the sum of a vector's lanes, in every lane (a log-step butterfly of
// shuffles rather than a serial chain over the lanes).
inline v8f all_lanes_max(v8f v) {
    v8f w = __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
    v = v > w ? v : w;
    w = __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5);
    v = v > w ? v : w;
    w = __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6);
    return v > w ? v : w;
}
inline v4f all_lanes_max(v4f v) {
    v4f w = __builtin_shufflevector(v, v, 2, 3, 0, 1);
    v = v > w ? v : w;
    w = __builtin_shufflevector(v, v, 1, 0, 3, 2);
    return v > w ? v : w;
}
inline v8f all_lanes_sum(v8f v) {
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
    v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5);
    return v + __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6);
}
inline v4f all_lanes_sum(v4f v) {
    v += __builtin_shufflevector(v, v, 2, 3, 0, 1);
    return v + __builtin_shufflevector(v, v, 1, 0, 3, 2);
}

// exp2_neg on a vector: rounding by the 1.5 2^23 trick (round to nearest, as nearbyint).
template <class V, class I> inline V exp2_neg_v(V x) {
    x = x < -126.0f ? V{} - 126.0f : x;
    const V n = (x + 12582912.0f) - 12582912.0f;
    const I e = (__builtin_convertvector(n, I) + 127) << 23;
    V scale;
    std::memcpy(&scale, &e, sizeof scale);
    return exp2_fraction(x - n) * scale;
}

// The buffer lattice l's blur step j reads: vertex buffer `from` at even steps, the scratch
// buffer at odd ones (and writes the other); the slice reads where step d1 - 1 wrote.
inline float* blur_source(Job& job, size_t l, int from, int j) {
    return j % 2 == 0 ? job.sets[from][l].data : job.scratch[l].data;
}
// A float16 lattice's step j writes half_rows[j % 2]; the slice reads the last step's.
inline const void* sliced_rows(Job& job, size_t l, int from) {
    const int d1 = job.lattices[l]->d1;
    if (job.half[l]) return job.half_rows[(d1 - 1) % 2][l].data;
    return blur_source(job, l, from, d1);
}

// message += constant * sum_r weight[r] vertices[offset[r]]: the slice of one pixel from one
// lattice with D1 = d + 1 vertices per simplex (fixed, so the loop over them unrolls), with two
// accumulators to halve the chain of dependent multiply-adds.
template <int D1, class V, int W, int CMAX, class T>
inline void slice_rows(const T* vertices, const int32_t* offset, const float* weight, int KP,
                       int C, float constant, V* message) {
    V even[CMAX], odd[CMAX];
    for (int c = 0; c < C; ++c) even[c] = V{}, odd[c] = V{};
    for (int r = 0; r < D1; ++r) {
        const V w = splat_value<V>(weight[r]);
        const T* row = vertices + size_t(offset[r]) * KP;
        V* into = r % 2 ? odd : even;
        for (int c = 0; c < C; ++c) into[c] += w * load_row<V>(row + c * W);
    }
    const V scale = splat_value<V>(constant);
    for (int c = 0; c < C; ++c) message[c] += scale * (even[c] + odd[c]);
}

// The splat of pixel p's Q (q_row) into lattice L: each of its D1 rows gets weight[r] q.
// (Summing a run of consecutive pixels in one simplex in registers first saved row updates
// but cost more in mispredicted branches, the run lengths being random on a photo: 0.79-0.87x
// the time of the textured photos without it, the smooth synthetic case unchanged, A/B.)
template <int D1, class V, int W, int CMAX>
inline void splat_pixel(float* vertices, const Lattice& L, int64_t p, const float* q_row, int KP,
                        int C) {
    const int32_t* offset = &L.splat_offset[p * D1];
    const float* weight = &L.weight[p * D1];
    V q[CMAX];
    for (int c = 0; c < C; ++c) q[c] = load<V>(q_row + c * W);
    for (int r = 0; r < D1; ++r) {
        const V w = splat_value<V>(weight[r]);
        float* row = vertices + size_t(offset[r]) * KP;
        for (int c = 0; c < C; ++c) store(row + c * W, load<V>(row + c * W) + w * q[c]);
    }
}

// One pass over pixels p0..p1: slice (unless first), update Q, then splat it into this
// thread's buffers or (last) write it out.
template <int KPT>
void pixel_pass(Job& job, int t, int64_t p0, int64_t p1, int from, bool first, bool last) {
    constexpr int W = lanes<KPT>;
    using V = typename VectorOf<W>::F;
    using I = typename VectorOf<W>::I;
    const int KP = KPT ? KPT : job.KP;
    const int C = KP / W;
    constexpr int CMAX = KPT ? KPT / W : MAX_KP / W;
    const int K = job.K;
    const size_t n_lattices = job.lattices.size();
    V q[CMAX], message[CMAX], part[CMAX], mask[CMAX];
    const float* q0 = job.q0.data;
    const void* sliced[2] = {};
    float* splat[2] = {};
    // Prefetching pays only for a lattice whose rows do not stay in the (L2) cache, or whose
    // rows the pixels reach in no order (every lattice once the pixels are reordered: 0.83-0.90x
    // the time of the noise case, A/B).
    bool prefetch[2] = {};
    for (size_t l = 0; l < n_lattices; ++l) {
        prefetch[l] = job.lattices[l]->M * KP * sizeof(float) > PREFETCH_BYTES || !job.pixel_of.empty();
        sliced[l] = sliced_rows(job, l, from);
        splat[l] = job.sets[1 - from][l].data;
    }
    // Pixels go in blocks: first every pixel's update (independent of one another, so the
    // processor overlaps them), then the block's splat. The rows of the next block are
    // prefetched: on a textured image a pixel's appearance-lattice vertices are scattered over
    // a buffer larger than the cache.
    constexpr int BLOCK = 16;
    alignas(64) float block_q[BLOCK * (KPT ? KPT : MAX_KP)];
    for (int c = 0; c < C; ++c) mask[c] = load<V>(&job.mask[c * W]);
    for (int64_t b0 = p0; b0 < p1; b0 += BLOCK) {
        const int n = int(std::min<int64_t>(BLOCK, p1 - b0));
        for (int i = 0; i < n; ++i) {
            const int64_t p = b0 + i;
            const float* u = &job.unary[p * KP];
            if (p + BLOCK < p1) {
                for (size_t l = 0; l < n_lattices; ++l) {
                    if (!prefetch[l]) continue;
                    const Lattice& L = *job.lattices[l];
                    const int32_t* ahead = &L.offset[(p + BLOCK) * L.d1];
                    const int32_t* ahead_splat = &L.splat_offset[(p + BLOCK) * L.d1];
                    const size_t row_bytes = KP * (job.half[l] ? 2 : 4);
                    for (int r = 0; r < L.d1; ++r) {
                        const char* read = static_cast<const char*>(sliced[l]) + ahead[r] * row_bytes;
                        for (int c = 0; c < KP; c += 16) {
                            if (!first) __builtin_prefetch(read + c * (row_bytes / KP), 0);
                            if (!last) __builtin_prefetch(splat[l] + size_t(ahead_splat[r]) * KP + c, 1);
                        }
                    }
                }
            }
            if (first) {
                for (int c = 0; c < C; ++c) q[c] = load<V>(&q0[p * KP + c * W]);
            } else {
                for (int c = 0; c < C; ++c) message[c] = V{};
                for (size_t l = 0; l < n_lattices; ++l) {
                    const Lattice& L = *job.lattices[l];
                    const int32_t* offset = &L.offset[p * L.d1];
                    const float* weight = &L.weight[p * L.d1];
                    const float f = L.constant;
                    const auto* full = static_cast<const float*>(sliced[l]);
                    const auto* half = static_cast<const uint16_t*>(sliced[l]);
                    if (L.d1 == 6 && job.half[l])
                        slice_rows<6, V, W, CMAX>(half, offset, weight, KP, C, f, message);
                    else if (L.d1 == 6)
                        slice_rows<6, V, W, CMAX>(full, offset, weight, KP, C, f, message);
                    else if (job.half[l])
                        slice_rows<3, V, W, CMAX>(half, offset, weight, KP, C, f, message);
                    else
                        slice_rows<3, V, W, CMAX>(full, offset, weight, KP, C, f, message);
                }
                if (job.compatibility) {  // e = -(u + message @ mu)
                    float m[MAX_KP];
                    for (int c = 0; c < C; ++c) store(&m[c * W], message[c]);
                    for (int c = 0; c < C; ++c) part[c] = V{};
                    for (int l = 0; l < K; ++l) {
                        const V ml = splat_value<V>(m[l]);
                        const float* mu = job.compatibility + size_t(l) * KP;
                        for (int c = 0; c < C; ++c) part[c] += ml * load<V>(mu + c * W);
                    }
                    for (int c = 0; c < C; ++c) q[c] = V{} - part[c] - load<V>(u + c * W);
                } else {  // Potts: -mu(message) = message up to a per-pixel constant
                    for (int c = 0; c < C; ++c) q[c] = message[c] - load<V>(u + c * W);
                }
                V highest = q[0];
                for (int c = 1; c < C; ++c) highest = q[c] > highest ? q[c] : highest;
                const V top = all_lanes_max(highest);
                V total = V{};
                for (int c = 0; c < C; ++c) {
                    q[c] = exp2_neg_v<V, I>(q[c] - top) * mask[c];
                    total += q[c];
                }
                const V scale = splat_value<V>(1.0f) / all_lanes_sum(total);
                for (int c = 0; c < C; ++c) q[c] *= scale;
            }
            for (int c = 0; c < C; ++c) store(&block_q[i * KP + c * W], q[c]);
        }
        if (last) {
            for (int i = 0; i < n; ++i) {
                const int64_t pixel = job.pixel_of.empty() ? b0 + i : job.pixel_of[b0 + i];
                if (job.out) std::memcpy(job.out + pixel * K, &block_q[i * KP], sizeof(float) * K);
                if (job.labels) job.labels[pixel] = first_largest(&block_q[i * KP], K);
            }
            continue;
        }
        for (size_t l = 0; l < n_lattices; ++l) {
            const Lattice& L = *job.lattices[l];
            for (int i = 0; i < n; ++i) {
                if (L.d1 == 6)
                    splat_pixel<6, V, W, CMAX>(splat[l], L, b0 + i, &block_q[i * KP], KP, C);
                else
                    splat_pixel<3, V, W, CMAX>(splat[l], L, b0 + i, &block_q[i * KP], KP, C);
            }
        }
    }
}

// Before the blur of lattice l: the threads' side rows of shared vertices s0..s1 added into
// buffer `from` (and cleared), and rows v0..v1 of the other buffer (sliced by the last pass,
// splatted into by the next) cleared.
template <int KPT>
void gather_splats(Job& job, size_t l, int from, int64_t s0, int64_t s1, int64_t v0, int64_t v1,
                   bool clear_other) {
    constexpr int W = lanes<KPT>;
    using V = typename VectorOf<W>::F;
    const int KP = KPT ? KPT : job.KP;
    const Lattice& L = *job.lattices[l];
    float* vertices = job.sets[from][l].data;
    const size_t S = L.shared.size();
    for (int t = 0; t < job.T; ++t) {
        for (int64_t s = s0; s < s1; ++s) {
            float* row = vertices + size_t(L.shared[s]) * KP;
            float* extra = vertices + (size_t(L.M) + 1 + t * S + size_t(s)) * KP;
            for (int c = 0; c < KP; c += W) store(row + c, load<V>(row + c) + load<V>(extra + c));
            std::memset(extra, 0, sizeof(float) * KP);
        }
    }
    if (clear_other)
        std::memset(job.sets[1 - from][l].data + size_t(v0) * KP, 0, size_t(v1 - v0) * KP * sizeof(float));
}

// v + (n1 + n2) / 2 for vertices v0..v1 of rows src into dst (all rows are read before any
// is overwritten, as in densecrf's two buffers).
template <int KPT, class S, class D>
void blur_rows(const Job& job, const int32_t* n1, const int32_t* n2, const S* src, D* dst,
               int64_t v0, int64_t v1) {
    constexpr int W = lanes<KPT>;
    using V = typename VectorOf<W>::F;
    const int KP = KPT ? KPT : job.KP;
    const int C = KP / W;
    const V half = splat_value<V>(0.5f);
    for (int64_t v = v0; v < v1; ++v) {
        const S* a = src + size_t(v) * KP;
        const S* b = src + size_t(n1[v]) * KP;
        const S* c = src + size_t(n2[v]) * KP;
        D* o = dst + size_t(v) * KP;
        for (int k = 0; k < C; ++k)
            store_row(o + k * W, load_row<V>(a + k * W) +
                                     half * (load_row<V>(b + k * W) + load_row<V>(c + k * W)));
    }
}

// Blur step j of lattice l over vertices v0..v1, between the buffers of blur_source (or, for
// a float16 lattice, from the splat buffer into half_rows and between those).
template <int KPT>
void blur_step(Job& job, size_t l, int from, int j, int64_t v0, int64_t v1) {
    const Lattice& L = *job.lattices[l];
    const int32_t* n1 = &L.n1[size_t(j) * L.M];
    const int32_t* n2 = &L.n2[size_t(j) * L.M];
    if (!job.half[l]) {
        blur_rows<KPT>(job, n1, n2, blur_source(job, l, from, j), blur_source(job, l, from, j + 1),
                       v0, v1);
    } else if (j == 0) {
        blur_rows<KPT>(job, n1, n2, job.sets[from][l].data, job.half_rows[0][l].data, v0, v1);
    } else {
        blur_rows<KPT>(job, n1, n2, job.half_rows[(j - 1) % 2][l].data,
                       job.half_rows[j % 2][l].data, v0, v1);
    }
}

// Calls step(l, begin, end) on this thread's share of the items of every lattice, where
// count(L) is how many lattice L has: one split over all lattices, so they balance.
template <class Count, class Step>
void split_lattices(Job& job, int t, Count count, Step step) {
    int64_t work = 0;
    for (auto* L : job.lattices) work += count(*L);
    const auto [w0, w1] = share(work, t, job.T);
    int64_t base = 0;
    for (size_t l = 0; l < job.lattices.size(); ++l) {
        const int64_t n = count(*job.lattices[l]);
        const int64_t b = std::max<int64_t>(w0 - base, 0), e = std::min<int64_t>(w1 - base, n);
        if (b < e) step(l, b, e);
        base += n;
    }
}

// The vertices that pixels of more than one of the T threads' ranges splat to, and the splat
// offsets that send those to side rows, on the T threads: each marks the vertices its pixels
// reach (no branch: which thread reaches a vertex is random on a textured image), one thread
// per lattice lists those that more than one thread reached, in vertex order, and each writes
// its pixels' splat offsets. `sync` is the T threads' barrier; reached (T, M) is scratch.
void mark_shared(Job& job, int t, std::barrier<>& sync, std::vector<std::vector<Array<uint8_t>>>& reached) {
    const int T = job.T;
    const int64_t N = job.N;
    const auto [p0, p1] = share(N, t, T);
    const size_t n_lattices = job.lattices.size();
    for (size_t l = 0; l < n_lattices; ++l) {
        Lattice& L = *job.lattices[l];
        uint8_t* mine = reached[l][t].data;
        std::memset(mine, 0, L.M);
        for (int64_t i = p0 * L.d1; i < p1 * L.d1; ++i) mine[L.offset[i]] = 1;
    }
    sync.arrive_and_wait();
    for (size_t l = t; l < n_lattices; l += T) {
        Lattice& L = *job.lattices[l];
        L.shared.clear();
        L.shared_id.assign(L.M, -1);
        for (int64_t v = 0; v < L.M; ++v) {
            int count = 0;
            for (int u = 0; u < T; ++u) count += reached[l][u][v];
            if (count > 1) {
                L.shared_id[v] = int32_t(L.shared.size());
                L.shared.push_back(int32_t(v));
            }
        }
    }
    sync.arrive_and_wait();
    for (size_t l = 0; l < n_lattices; ++l) {
        Lattice& L = *job.lattices[l];
        const int32_t* id = L.shared_id.data();
        const int32_t side = int32_t(L.M + 1 + int64_t(t) * int64_t(L.shared.size()));
        for (int64_t i = p0 * L.d1; i < p1 * L.d1; ++i) {
            const int32_t o = L.offset[i], s = id[o];
            L.splat_offset[i] = s >= 0 ? side + s : o;
        }
    }
}

// The passes visit the pixels of an image whose appearance lattice is larger than the cache
// (a noisy image's) in the order of their simplex's first corner, the lattice's vertices being
// in code order (sort_vertices): consecutive pixels then slice and splat rows of neighbouring
// vertices, which stay in the cache, where in image order each pixel's rows lie anywhere in a
// buffer many times the cache. The per-pixel arrays of both lattices and the unary are
// permuted once, and the last pass writes each pixel's Q to its place in the image. (Only the
// order in which pixels add into a vertex's row changes: float32 rounding.) Runs on T threads.
void reorder_pixels(Job& job, const Lattice& key, int T) {
    const int64_t N = job.N;
    const int KP = job.KP;
    std::vector<int64_t> start(key.M + 1, 0);
    for (int64_t p = 0; p < N; ++p) ++start[key.offset[p * key.d1] + 1];
    for (int64_t v = 0; v < key.M; ++v) start[v + 1] += start[v];
    job.pixel_of.resize(N);
    for (int64_t p = 0; p < N; ++p) job.pixel_of[start[key.offset[p * key.d1]]++] = int32_t(p);
    std::vector<Array<int32_t>> offset(job.lattices.size());
    std::vector<Array<float>> weight(job.lattices.size());
    Array<float> unary(size_t(N) * KP), q0(size_t(N) * KP);
    for (size_t l = 0; l < job.lattices.size(); ++l) {
        offset[l].resize(size_t(N) * job.lattices[l]->d1);
        weight[l].resize(size_t(N) * job.lattices[l]->d1);
    }
    const bool ok = run_threads(T, [&](int t) {
        const auto [i0, i1] = share(N, t, T);
        for (size_t l = 0; l < job.lattices.size(); ++l) {
            Lattice& L = *job.lattices[l];
            const int d1 = L.d1;
            for (int64_t i = i0; i < i1; ++i) {
                const int64_t p = job.pixel_of[i];
                std::memcpy(&offset[l][i * d1], &L.offset[p * d1], sizeof(int32_t) * d1);
                std::memcpy(&weight[l][i * d1], &L.weight[p * d1], sizeof(float) * d1);
            }
        }
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t p = job.pixel_of[i];
            std::memcpy(&unary[i * KP], &job.unary[p * KP], sizeof(float) * KP);
            std::memcpy(&q0[i * KP], &job.q0[p * KP], sizeof(float) * KP);
        }
    });
    if (!ok) throw std::bad_alloc();
    for (size_t l = 0; l < job.lattices.size(); ++l) {
        job.lattices[l]->offset = std::move(offset[l]);
        job.lattices[l]->weight = std::move(weight[l]);
    }
    job.unary = std::move(unary);
    job.q0 = std::move(q0);
}

template <int KPT>
void mean_field(Job& job) {
    const int T = job.T;
    int max_d1 = 0;
    for (auto* L : job.lattices) max_d1 = std::max(max_d1, L->d1);
    // Two threads and two lattices of similar blur work (a photo's, typically): one lattice per
    // thread, which synchronises twice per iteration instead of once per blur step (on a busy
    // machine every barrier waits for the thread that was descheduled). Otherwise the threads
    // split every lattice's vertices evenly. (Splitting them by which thread's pixels created
    // them, to keep rows in one core's cache, measured no different.)
    bool by_lattice = false;
    if (T == 2 && job.lattices.size() == 2) {
        const double a = double(job.lattices[0]->M) * job.lattices[0]->d1;
        const double b = double(job.lattices[1]->M) * job.lattices[1]->d1;
        by_lattice = std::min(a, b) > 0.7 * std::max(a, b);
    }
    auto vertex_range = [&](const Lattice& L, int t) { return share(L.M, t, T); };
    std::barrier sync(T);
    double pixel_ms = 0, blur_ms = 0;
    std::vector<double> thread_pixel_ms(T, 0.0);
    run_threads(T, [&](int t) {
        const auto [p0, p1] = share(job.N, t, T);
        double since = thread_ms();
        auto add = [&](double& total) {
            const double now = thread_ms();
            if (t == 0) total += now - since;
            if (&total == &pixel_ms) thread_pixel_ms[t] += now - since;
            since = now;
        };
        pixel_pass<KPT>(job, t, p0, p1, 1, true, false);  // splats into set 0
        add(pixel_ms);
        for (int it = 0; it < job.iterations; ++it) {
            const int from = it % 2;
            sync.arrive_and_wait();
            if (by_lattice) {  // each thread blurs one lattice whole: no barrier per step
                const Lattice& L = *job.lattices[t];
                gather_splats<KPT>(job, t, from, 0, int64_t(L.shared.size()), 0, L.M, it > 0);
                for (int j = 0; j < L.d1; ++j) blur_step<KPT>(job, t, from, j, 0, L.M);
            } else {
                for (size_t l = 0; l < job.lattices.size(); ++l) {
                    const Lattice& L = *job.lattices[l];
                    const auto [s0, s1] = share(int64_t(L.shared.size()), t, T);
                    const auto [v0, v1] = vertex_range(L, t);
                    gather_splats<KPT>(job, l, from, s0, s1, v0, v1, it > 0);
                }
                for (int j = 0; j < max_d1; ++j) {
                    sync.arrive_and_wait();
                    for (size_t l = 0; l < job.lattices.size(); ++l) {
                        const Lattice& L = *job.lattices[l];
                        const auto [v0, v1] = vertex_range(L, t);
                        if (j < L.d1 && v0 < v1) blur_step<KPT>(job, l, from, j, v0, v1);
                    }
                }
            }
            sync.arrive_and_wait();
            add(blur_ms);
            pixel_pass<KPT>(job, t, p0, p1, from, false, it == job.iterations - 1);
            add(pixel_ms);
        }
    });
    if (std::getenv("SEGLAB_CRF_PROFILE"))
    {
        std::fprintf(stderr, "  pixel passes %8.2f ms, blur %8.2f ms (with waits); per thread:", pixel_ms, blur_ms);
        for (double ms : thread_pixel_ms) std::fprintf(stderr, " %.2f", ms);
        std::fprintf(stderr, "\n");
    }
}

int run(const float* scores, int logits, const uint8_t* image, int height, int width, int classes,
        const double* params, int iterations, const float* compatibility, float* out,
        int64_t* labels, int threads) {
    const int64_t N = int64_t(height) * width;
    Clock clock;
    Job job;
    job.N = N;
    job.K = classes;
    // Classes padded to whole vectors: 8 lanes up to 24 classes (the fixed-size versions below;
    // fewer would each add compile time), 4 beyond (the generic version).
    job.KP = classes <= 24 ? (classes + 7) / 8 * 8 : (classes + 3) / 4 * 4;
    if (job.KP > MAX_KP) return 3;
    job.iterations = iterations;
    job.out = out;
    job.labels = labels;
    job.T = std::max(1, std::min<int>(threads, int(N / 4096) + 1));
    const int T = job.T;
    // params: w1, theta_alpha, theta_beta, w2, theta_gamma.
    Lattice appearance, smoothness;
    appearance.d = 5;
    smoothness.d = 2;
    for (int i = 0; i < 2; ++i) appearance.feature_scale[i] = float(params[1]);
    for (int i = 2; i < 5; ++i) appearance.feature_scale[i] = float(params[2]);
    for (int i = 0; i < 2; ++i) smoothness.feature_scale[i] = float(params[4]);
    const float weights[2] = {float(params[0]), float(params[3])};
    Lattice* kernels[2] = {&appearance, &smoothness};
    for (int l = 0; l < 2; ++l) {
        if (!(weights[l] > 0) || iterations == 0) continue;
        Lattice& L = *kernels[l];
        L.d1 = L.d + 1;
        L.constant = weights[l] * LOG2_E / (1.0f + std::pow(2.0f, -float(L.d)));
        job.lattices.push_back(&L);
    }
    try {
        job.unary.resize(size_t(N) * job.KP);
        job.q0.resize(size_t(N) * job.KP);
        if (compatibility) {
            job.compatibility_rows.assign(size_t(classes) * job.KP, 0.0f);
            for (int l = 0; l < classes; ++l)
                std::memcpy(&job.compatibility_rows[size_t(l) * job.KP],
                            compatibility + size_t(l) * classes, sizeof(float) * classes);
            job.compatibility = job.compatibility_rows.data();
        }
        job.mask.assign(job.KP, 0.0f);
        std::fill(job.mask.begin(), job.mask.begin() + classes, 1.0f);
        for (auto* L : job.lattices) {
            L->rem0.resize(size_t(N) * L->d1);
            L->rank.resize(size_t(N) * L->d1);
            L->offset.resize(size_t(N) * L->d1);
            L->weight.resize(size_t(N) * L->d1);
            L->splat_offset.resize(size_t(N) * L->d1);
            L->min_rem0.resize(size_t(T) * L->d);
            L->max_rem0.resize(size_t(T) * L->d);
        }
    } catch (const std::bad_alloc&) {
        return 1;
    }
    // The unary, in chunks taken by whichever thread is free: with the hash tables below (one
    // lattice per thread, the appearance lattice's the longer), or first when there are none.
    std::atomic<int64_t> next_unary{0};
    auto unary_chunks = [&] {
        constexpr int64_t CHUNK = 4096;
        for (int64_t c; (c = next_unary.fetch_add(CHUNK)) < N;)
            prepare_unary(job, scores, logits != 0, c, std::min(N, c + CHUNK));
    };
    // The per-pixel work of the build, split by pixels.
    bool ok = run_threads(T, [&](int t) {
        const auto [p0, p1] = share(N, t, T);
        if (job.lattices.empty()) unary_chunks();
        for (auto* L : job.lattices) {
            if (L->d == 5)
                embed<5>(*L, image, N, width, p0, p1, t);
            else
                embed<2>(*L, image, N, width, p0, p1, t);
        }
    });
    if (!ok) return 1;
    clock.lap("embed");
    if (job.lattices.empty()) {
        for (int64_t p = 0; p < N; ++p) {
            if (out)
                for (int k = 0; k < classes; ++k) out[p * classes + k] = job.q0[p * job.KP + k];
            if (labels) labels[p] = first_largest(&job.q0[p * job.KP], classes);
        }
        return 0;
    }
    for (auto* L : job.lattices)
        if (!layout(*L, T)) return 2;
    // The hash tables, one lattice per thread, then the rest of the unary.
    const int n_lattices = int(job.lattices.size());
    const int builders = std::min(T, n_lattices);
    ok = run_threads(T, [&](int t) {
        for (int l = t; l < n_lattices; l += T) {
            Lattice& L = *job.lattices[l];
            if (L.d == 5)
                insert_vertices<5>(L, N);
            else
                insert_vertices<2>(L, N);
            if (size_t(L.M) * job.KP * sizeof(float) > SORT_BYTES) sort_vertices(L, N);
        }
        unary_chunks();
    });
    if (!ok) return 1;
    clock.lap("hash, unary");
    ok = run_threads(T, [&](int t) {
        split_lattices(job, t, [](const Lattice& L) { return L.M; },
                       [&](size_t l, int64_t b, int64_t e) { find_neighbours(*job.lattices[l], b, e); });
    });
    if (!ok) return 1;
    clock.lap("neighbours");
    ok = run_threads(builders, [&](int t) {
        for (int l = t; l < n_lattices; l += builders) {
            HashTable().slots.swap(job.lattices[l]->table.slots);
            if (job.lattices[l]->d1 == 6)
                normalise<6>(*job.lattices[l], N);
            else
                normalise<3>(*job.lattices[l], N);
        }
    });
    if (!ok) return 1;
    if (job.lattices[0]->d == 5 && job.lattices[0]->sorted) {
        try {
            reorder_pixels(job, *job.lattices[0], T);
        } catch (const std::bad_alloc&) {
            return 1;
        }
    }
    if (T == 1) {  // one thread: nothing is shared
        for (auto* L : job.lattices)
            std::memcpy(L->splat_offset.data, L->offset.data, sizeof(int32_t) * N * L->d1);
    } else {
        std::vector<std::vector<Array<uint8_t>>> reached(n_lattices);
        try {
            for (int l = 0; l < n_lattices; ++l) {
                reached[l].resize(T);
                for (auto& row : reached[l]) row.resize(job.lattices[l]->M);
                job.lattices[l]->shared.reserve(job.lattices[l]->M);
                job.lattices[l]->shared_id.reserve(job.lattices[l]->M);
            }
        } catch (const std::bad_alloc&) {
            return 1;
        }
        std::barrier<> sync(T);
        ok = run_threads(T, [&](int t) { mark_shared(job, t, sync, reached); });
        if (!ok) return 1;
    }
    clock.lap("normalise");
    try {
        for (auto& set : job.sets) set.resize(n_lattices);
        job.scratch.resize(n_lattices);
        for (int l = 0; l < n_lattices; ++l) {
            const Lattice& L = *job.lattices[l];
            const size_t rows = size_t(L.M + 1) * job.KP;
            const size_t side_rows = size_t(T) * L.shared.size() * job.KP;
            for (auto& set : job.sets) set[l].resize_zeroed(rows + side_rows);
            job.half[l] = HALF_STORAGE && job.KP % 8 == 0 && L.M > HALF_PRECISION_RATIO * N &&
                          L.M * job.KP * sizeof(float) > HALF_STORAGE_BYTES &&
                          !std::getenv("SEGLAB_CRF_FLOAT32");
            // Blur buffers: every row but the zero row M is written before it is read.
            for (auto& rows_of : job.half_rows) {
                rows_of.resize(n_lattices);
                if (!job.half[l]) continue;
                rows_of[l].resize(rows);
                std::memset(&rows_of[l][size_t(L.M) * job.KP], 0, sizeof(uint16_t) * job.KP);
            }
            if (!job.half[l]) {
                job.scratch[l].resize(rows);
                std::memset(&job.scratch[l][size_t(L.M) * job.KP], 0, sizeof(float) * job.KP);
            }
        }
    } catch (const std::bad_alloc&) {
        return 1;
    }
    clock.lap("buffers");
    switch (job.KP) {
        case 8: mean_field<8>(job); break;
        case 16: mean_field<16>(job); break;
        case 24: mean_field<24>(job); break;
        default: mean_field<0>(job); break;
    }
    clock.lap("mean field");
    if (clock.on)
        for (auto* L : job.lattices)
        {
            std::fprintf(stderr, "  lattice d=%d: %lld vertices\n", L->d, (long long)L->M);
        }
    return 0;
}

}  // namespace

extern "C" {

// Version of this interface; native.py checks it after loading.
int seglab_dense_crf_version() { return 2; }

// Q (N, K) into out and each pixel's most probable class (the first of equal ones) into labels
// (either may be null) for scores (K, N) (probabilities, or logits when logits != 0), an image
// (3, H, W) uint8, params = (w1, theta_alpha, theta_beta, w2, theta_gamma), an optional (K, K)
// base-2 compatibility cost (null: Potts), on `threads` threads. Returns 0, or 1 (out of
// memory), 2 (features span too large a lattice), 3 (too many classes), 4 (other error).
int seglab_dense_crf(const float* scores, int logits, const uint8_t* image, int height, int width,
                     int classes, const double* params, int iterations, const float* compatibility,
                     float* out, int64_t* labels, int threads) {
    try {
        FlushDenormals flush;
        return run(scores, logits, image, height, width, classes, params, iterations,
                   compatibility, out, labels, threads);
    } catch (...) {
        return 4;
    }
}
}
