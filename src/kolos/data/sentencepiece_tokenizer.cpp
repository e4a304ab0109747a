// SentencePiece models through libsentencepiece, loaded at run time.
//
// Why dlopen: Debian's libsentencepiece.so.0 carries its own copy of protobuf-lite 3.14 and exports its symbols;
// LibTorch loads libprotobuf.so.32 (3.21). Linked together, whichever library comes first in the global symbol
// scope interposes the other's protobuf and the process dies before main(). Opened with RTLD_LOCAL | RTLD_DEEPBIND,
// libsentencepiece binds to its own protobuf and stays out of the global scope. Its C++ entry points are looked up
// by their (Itanium ABI) mangled names and called with `this` as the first argument; the header is included only
// for the object's size. The library must therefore NOT be linked into kolos (only its header is used).
//
// Round trips are exact only for models trained without normalization and with byte fallback
// (spm_train --normalization_rule_name=identity --remove_extra_whitespaces=false --byte_fallback=true); other models
// normalize text as they were trained to.
#include <dlfcn.h>

#include <string_view>

#include <sentencepiece_processor.h>

#include "kolos/core/error.h"
#include "kolos/data/tokenizer.h"

namespace kolos::data {

namespace {

constexpr const char* kLibrary = "libsentencepiece.so.0";

// sentencepiece::util::Status: one pointer, null when ok, with a non-trivial destructor (so it is returned through a
// hidden pointer, exactly like the library's type).
struct RawStatus {
  void* rep = nullptr;
  ~RawStatus();
  bool ok() const { return rep == nullptr; }
  std::string message() const;
};

// The library's entry points, resolved once per process.
struct SentencePieceApi {
  void (*construct)(void* self);
  void (*destruct)(void* self);
  RawStatus (*load)(void* self, std::string_view path);
  RawStatus (*encode)(const void* self, std::string_view text, std::vector<int>* ids);
  RawStatus (*decode)(const void* self, const std::vector<int>& ids, std::string* text);
  int (*piece_size)(const void* self);
  int (*eos_id)(const void* self);
  bool (*is_control)(const void* self, int id);
  const std::string& (*id_to_piece)(const void* self, int id);
  void (*status_destruct)(void* status);
  std::string (*status_to_string)(const void* status);
};

const SentencePieceApi& api() {
  static const SentencePieceApi instance = [] {
    void* library = dlopen(kLibrary, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    KOLOS_CHECK(library != nullptr, "sentencepiece tokenizer: cannot load {} ({}); install Debian's libsentencepiece0",
                kLibrary, dlerror());
    const auto resolve = [&](auto& function, const char* mangled) {
      void* address = dlsym(library, mangled);
      KOLOS_CHECK(address != nullptr, "sentencepiece tokenizer: {} lacks {} (expected version 0.1.9x)", kLibrary,
                  mangled);
      function = reinterpret_cast<std::remove_reference_t<decltype(function)>>(address);
    };
    SentencePieceApi a{};
    resolve(a.construct, "_ZN13sentencepiece22SentencePieceProcessorC1Ev");
    resolve(a.destruct, "_ZN13sentencepiece22SentencePieceProcessorD1Ev");
    resolve(a.load, "_ZN13sentencepiece22SentencePieceProcessor4LoadESt17basic_string_viewIcSt11char_traitsIcEE");
    resolve(a.encode,
            "_ZNK13sentencepiece22SentencePieceProcessor6EncodeESt17basic_string_viewIcSt11char_traitsIcEEPSt6vectorIiSa"
            "IiEE");
    resolve(a.decode,
            "_ZNK13sentencepiece22SentencePieceProcessor6DecodeERKSt6vectorIiSaIiEEPNSt7__cxx1112basic_stringIcSt11char"
            "_traitsIcESaIcEEE");
    resolve(a.piece_size, "_ZNK13sentencepiece22SentencePieceProcessor12GetPieceSizeEv");
    resolve(a.eos_id, "_ZNK13sentencepiece22SentencePieceProcessor6eos_idEv");
    resolve(a.is_control, "_ZNK13sentencepiece22SentencePieceProcessor9IsControlEi");
    resolve(a.id_to_piece, "_ZNK13sentencepiece22SentencePieceProcessor9IdToPieceB5cxx11Ei");
    resolve(a.status_destruct, "_ZN13sentencepiece4util6StatusD1Ev");
    resolve(a.status_to_string, "_ZNK13sentencepiece4util6Status8ToStringB5cxx11Ev");
    return a;
  }();
  return instance;
}

static_assert(sizeof(RawStatus) == sizeof(sentencepiece::util::Status), "util::Status layout changed");

RawStatus::~RawStatus() {
  if (rep) api().status_destruct(this);
}

std::string RawStatus::message() const { return ok() ? "ok" : api().status_to_string(this); }

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& model_path) : model_path_(model_path), api_(api()) {
    processor_ = ::operator new(sizeof(sentencepiece::SentencePieceProcessor));
    api_.construct(processor_);
    const RawStatus status = api_.load(processor_, model_path);
    if (!status.ok()) {
      release();
      throw InputError(fmt::format("sentencepiece tokenizer: cannot load model {} ({})", model_path, status.message()));
    }
    vocab_size_ = api_.piece_size(processor_);
    eot_id_ = api_.eos_id(processor_);
    if (eot_id_ < 0) {
      release();
      throw InputError(fmt::format(
          "sentencepiece tokenizer: model {} has no end-of-sequence piece (train it with --eos_id >= 0)", model_path));
    }
  }
  ~SentencePieceTokenizer() override { release(); }

  std::string kind() const override { return "sentencepiece"; }
  int64_t vocab_size() const override { return vocab_size_; }
  int32_t eot_id() const override { return eot_id_; }

  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int> ids;
    const RawStatus status = api_.encode(processor_, text, &ids);
    KOLOS_CHECK(status.ok(), "sentencepiece tokenizer {}: cannot encode text ({})", model_path_, status.message());
    return std::vector<int32_t>(ids.begin(), ids.end());
  }

  // libsentencepiece decodes control pieces (<s>, </s>) to nothing; they are written as their text instead, and the
  // runs between them are decoded separately (each was encoded as a document of its own).
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string text;
    std::vector<int> run;
    const auto flush = [&] {
      if (run.empty()) return;
      std::string piece;
      const RawStatus status = api_.decode(processor_, run, &piece);
      KOLOS_CHECK(status.ok(), "sentencepiece tokenizer {}: cannot decode ({})", model_path_, status.message());
      text += piece;
      run.clear();
    };
    for (int32_t id : ids) {
      KOLOS_CHECK(id >= 0 && id < vocab_size_, "sentencepiece tokenizer {}: token id {} is outside the vocabulary [0, {})",
                  model_path_, id, vocab_size_);
      if (api_.is_control(processor_, id)) {
        flush();
        text += api_.id_to_piece(processor_, id);
      } else {
        run.push_back(id);
      }
    }
    flush();
    return text;
  }

 private:
  void release() {
    if (!processor_) return;
    api_.destruct(processor_);
    ::operator delete(processor_);
    processor_ = nullptr;
  }

  std::string model_path_;
  const SentencePieceApi& api_;
  void* processor_ = nullptr;  // a sentencepiece::SentencePieceProcessor built by the library
  int64_t vocab_size_ = 0;
  int32_t eot_id_ = 0;
};

}  // namespace

std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::string& model_path) {
  return std::make_unique<SentencePieceTokenizer>(model_path);
}

}  // namespace kolos::data
