// asyppo/asyppo.hpp: umbrella header. Includes the views, the CPU backend, the single-process
// communicator and every algorithm. Optional components (MPI, CUDA) have their own headers.
#pragma once

#include "asyppo/version.hpp"
#include "asyppo/config.hpp"
#include "asyppo/error.hpp"
#include "asyppo/half_types.hpp"
#include "asyppo/views.hpp"

#include "asyppo/backend/patterns.hpp"
#include "asyppo/backend/cpu.hpp"
#include "asyppo/comm/communicator.hpp"

#include "asyppo/core/ensemble.hpp"
#include "asyppo/core/groups.hpp"
#include "asyppo/core/shards.hpp"
#include "asyppo/core/gae.hpp"
#include "asyppo/core/moments.hpp"
#include "asyppo/core/whiten.hpp"
#include "asyppo/core/outcome.hpp"
#include "asyppo/core/select.hpp"
#include "asyppo/core/uncertainty_masks.hpp"
#include "asyppo/core/advantage_stats.hpp"
#include "asyppo/core/advantage_step.hpp"
#include "asyppo/core/aggregation.hpp"
#include "asyppo/core/policy_loss.hpp"
#include "asyppo/core/entropy.hpp"
#include "asyppo/core/kl.hpp"
#include "asyppo/core/value_loss.hpp"
#include "asyppo/core/actor_objective.hpp"
#include "asyppo/core/critic_heads.hpp"
#include "asyppo/core/global_counts.hpp"
